"""`factory`: the portal from the command line, through its public API only.

    factory login https://factory.example.org      # asks for a username and password
    factory submit job.yaml                         # the API's job spec, in YAML
    factory submit -J train -G 2 --gpu-type h100 -t 2:00:00 --wrap "python train.py"
    factory submit --array 0-99%10 --wrap 'python train.py --shard $FACTORY_ARRAY_INDEX'
    factory ls | status ID | logs -f ID | cancel ID | cancel --array ID | wait ID

Every command takes --json. `wait` ends with the job's own exit code when it failed, 0 when it
succeeded, 124 when it timed out, 130 when it was cancelled and 125 when it was rejected.
"""

from __future__ import annotations

import functools
import getpass
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from .client import TERMINAL, Client, CliError, Config, load_config, save_config
from .spec import (
    SpecFile,
    parse_assignments,
    parse_dependency,
    parse_memory,
    parse_time,
    secrets_from_environment,
)

app = typer.Typer(
    help="Submit and follow GPU jobs on the AI factory portal.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

POLL_SECONDS = 1.0
WAIT_EXIT_CODES = {"succeeded": 0, "timed_out": 124, "cancelled": 130, "rejected": 125}
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def reports_errors(command):
    """A CliError ends the command with its message on stderr and its exit code, no traceback."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except CliError as exc:
            err.print(f"[bold red]error:[/] {exc}", markup=True)
            for line in exc.details:
                err.print(f"  {line}", markup=False)
            raise typer.Exit(exc.code) from None
        except KeyboardInterrupt:
            raise typer.Exit(130) from None

    return run


def client() -> Client:
    return Client(load_config())


def print_json(data) -> None:
    out.print(json.dumps(data, indent=2, sort_keys=True), markup=False)


# --- signing in ---------------------------------------------------------------------------------


@app.command()
@reports_errors
def login(
    url: Annotated[str, typer.Argument(help="The portal's address, e.g. https://factory.example.org")],
    username: Annotated[str, typer.Option("--username", "-u", help="Default: your login name.")] = "",
    password_stdin: Annotated[bool, typer.Option(help="Read the password from stdin.")] = False,
    token_stdin: Annotated[
        bool, typer.Option(help="Read an API token (made on the portal's API tokens page) from stdin.")
    ] = False,
    name: Annotated[str, typer.Option(help="Name of the new token.")] = "",
    as_json: JsonOption = False,
) -> None:
    """Get an API token and store it, readable by you only, in your config directory."""
    url = url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise CliError(f"{url!r} is not an address: use https://…", code=2)
    if token_stdin:
        token = sys.stdin.readline().strip()
        api = Client(Config(url=url, token=token))
        api.tenants()  # proves the token works
        issued = {"name": "", "expires_at": None}
    else:
        username = username or getpass.getuser()
        password = (
            sys.stdin.readline().rstrip("\n")
            if password_stdin
            else getpass.getpass(f"Password for {username}: ")
        )
        token_name = name or f"cli@{socket.gethostname()}"[:100]
        issued = Client(Config(url=url)).issue_token(username, password, token_name)
        token = issued["token"]
    path = save_config(Config(url=url, token=token))
    if as_json:
        print_json(
            {"url": url, "config": str(path), "name": issued["name"], "expires_at": issued["expires_at"]}
        )
        return
    expiry = f", expires {issued['expires_at']}" if issued.get("expires_at") else ""
    out.print(f"Signed in to {url}; token stored in {path}{expiry}.", markup=False)


# --- submitting -----------------------------------------------------------------------------------


@app.command()
@reports_errors
def submit(
    source: Annotated[
        Path | None,
        typer.Argument(help="A YAML job spec (.yaml/.yml) or a script whose text is the job's command."),
    ] = None,
    job_name: Annotated[str | None, typer.Option("--job-name", "-J")] = None,
    tenant: Annotated[str | None, typer.Option("--tenant", "-A", help="Default: your only tenant.")] = None,
    gpus: Annotated[int | None, typer.Option("--gpus", "-G", help="GPUs on one node.")] = None,
    nodes: Annotated[int | None, typer.Option("--nodes", "-N", help="Nodes, started at once.")] = None,
    gpus_per_node: Annotated[
        int | None, typer.Option("--gpus-per-node", help="GPUs on each node of a job on several nodes.")
    ] = None,
    gpu_type: Annotated[str | None, typer.Option("--gpu-type")] = None,
    time_limit: Annotated[str | None, typer.Option("--time", "-t", help="Minutes, H:M:S or D-H:M:S.")] = None,
    cpus: Annotated[int | None, typer.Option("--cpus-per-task", "-c")] = None,
    memory: Annotated[str | None, typer.Option("--mem", help="E.g. 64G (megabytes without a unit).")] = None,
    image: Annotated[str | None, typer.Option("--image", help="Container image (Kubernetes).")] = None,
    priority: Annotated[int | None, typer.Option("--priority")] = None,
    export: Annotated[
        list[str] | None, typer.Option("--export", "-e", help="NAME=VALUE, repeatable.")
    ] = None,
    secret: Annotated[
        list[str] | None,
        typer.Option("--secret", help="NAME: send the environment variable NAME as a secret. Repeatable."),
    ] = None,
    wrap: Annotated[str | None, typer.Option("--wrap", help="The command, instead of a script.")] = None,
    dependency: Annotated[
        str | None, typer.Option("--dependency", "-d", help="afterok:ID[:ID…],afterany:ID[:ID…]")
    ] = None,
    array: Annotated[
        str | None,
        typer.Option(
            "--array", "-a", help="A task per index, as sbatch's: 0-99, 1,3,5-7, with %N for N at once."
        ),
    ] = None,
    cluster: Annotated[str | None, typer.Option("--cluster", help="Run only on this cluster.")] = None,
    region: Annotated[str | None, typer.Option("--region", help="Run only in this region.")] = None,
    wait_for_it: Annotated[bool, typer.Option("--wait", help="Then wait for the job to end.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Submit a job (or an array of tasks: --array, or `array:`/`sweep:` in YAML) from a YAML
    spec, a script, or flags like sbatch's."""
    spec_file = None
    spec: dict = {}
    if source is not None and source.suffix in (".yaml", ".yml"):
        spec_file = SpecFile(source)
        spec = dict(spec_file.data)
    elif source is not None:
        try:
            spec["command"] = source.read_text()
        except OSError as exc:
            raise CliError(f"cannot read {source}: {exc.strerror}", code=2) from None
        spec.setdefault("name", source.stem)
    if wrap is not None:
        spec["command"] = wrap
    flags = {
        "name": job_name,
        "tenant": tenant,
        "gpu_count": gpus,
        "nodes": nodes,
        "gpus_per_node": gpus_per_node,
        "gpu_type": gpu_type,
        "time_limit_minutes": parse_time(time_limit) if time_limit else None,
        "cpus": cpus,
        "memory_gb": parse_memory(memory) if memory else None,
        "image": image,
        "priority": priority,
        "array": array,
        "cluster": cluster,
        "region": region,
    }
    spec.update({k: v for k, v in flags.items() if v is not None})
    if export:
        spec["env"] = {**(spec.get("env") or {}), **parse_assignments(export, "--export")}
    if dependency:
        for kind, ids in parse_dependency(dependency).items():
            spec[kind] = [*(spec.get(kind) or []), *ids]
    if secret:
        spec["secrets"] = {
            **(spec.get("secrets") or {}),
            **secrets_from_environment(secret, dict(os.environ)),
        }
    if "command" not in spec:
        raise CliError("no command: give a script, a YAML spec with `command:`, or --wrap", code=2)
    api = client()
    spec.setdefault("tenant", default_tenant(api))
    try:
        job = api.submit(spec)
    except CliError as exc:
        if spec_file is not None:
            exc.details = [spec_file.locate(line) for line in exc.details]
        raise
    if "job_ids" in job:  # an array
        submitted_array(api, job, wait_for_it=wait_for_it, as_json=as_json)
        return
    if wait_for_it:
        if not as_json:
            err.print(f"Submitted job {job['id']}", markup=False)
        final = wait_until_done(api, job["id"], quiet=as_json)
        if as_json:
            print_json(final)
        raise typer.Exit(exit_code_of(final))
    if as_json:
        print_json(job)
    else:
        out.print(f"Submitted job {job['id']}", markup=False)


def submitted_array(api: Client, array: dict, *, wait_for_it: bool, as_json: bool) -> None:
    ids = array["job_ids"]
    line = f"Submitted array {array['id']}: {array['size']} tasks (jobs {ids[0]}–{ids[-1]})"
    if not wait_for_it:
        if as_json:
            print_json(array)
        else:
            out.print(line, markup=False)
        return
    if not as_json:
        err.print(line, markup=False)
    final = wait_for_array(api, array["id"], quiet=as_json)
    if as_json:
        print_json(final)
    raise typer.Exit(0 if set(final["counts"]) <= {"succeeded"} else 1)


def wait_for_array(api: Client, array_id: int, *, quiet: bool, timeout: float | None = None) -> dict:
    """Poll the array until none of its tasks is left to run, showing its tasks by state."""
    deadline = None if timeout is None else time.monotonic() + timeout
    shown = None
    while True:
        array = api.array(array_id)
        line = f"array {array_id}: " + ", ".join(
            f"{n} {state}" for state, n in sorted(array["counts"].items())
        )
        if not quiet and line != shown:
            err.print(line, markup=False)
        shown = line
        if array["active"] == 0:
            return array
        if deadline is not None and time.monotonic() >= deadline:
            raise CliError(f"array {array_id} still has {array['active']} tasks to run after {timeout:g} s")
        time.sleep(POLL_SECONDS)


def default_tenant(api: Client) -> str:
    slugs = [t["slug"] for t in api.tenants()]
    if len(slugs) == 1:
        return slugs[0]
    if not slugs:
        raise CliError("you are a member of no tenant: ask a tenant admin to add you")
    raise CliError(f"you are in several tenants; choose one with --tenant: {', '.join(slugs)}", code=2)


# --- looking ----------------------------------------------------------------------------------------


@app.command("ls")
@reports_errors
def list_jobs(
    state: Annotated[list[str] | None, typer.Option("--state", "-s", help="Repeatable.")] = None,
    tenant: Annotated[str | None, typer.Option("--tenant", "-A")] = None,
    everyone: Annotated[
        bool, typer.Option("--all", "-a", help="Every job you may see, not only yours.")
    ] = False,
    limit: Annotated[int, typer.Option(min=1, max=10000)] = 50,
    as_json: JsonOption = False,
) -> None:
    """Your jobs, newest first."""
    params: dict = {"state": state or []}
    if tenant:
        params["tenant"] = tenant
    if not everyone:
        params["mine"] = "true"
    jobs = client().jobs(params, limit)
    if as_json:
        print_json(jobs)
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("ID", "NAME", "TENANT", "OWNER", "STATE", "GPUS", "CLUSTER", "REASON"):
        table.add_column(column, overflow="fold" if column == "REASON" else "ellipsis")
    for job in jobs:
        task = f"[{job['array_index']}]" if job.get("array") is not None else ""
        table.add_row(
            str(job["id"]),
            job["name"] + task,
            job["tenant"],
            job["owner"],
            job["state"],
            f"{job['gpu_count']}×{job['gpu_type']}",
            job["cluster"] or "",
            job["reason"],
        )
    out.print(table)


@app.command()
@reports_errors
def gpus(
    cluster: Annotated[str, typer.Argument(metavar="CLUSTER")],
    health: Annotated[str | None, typer.Option(help="healthy, warning or failed")] = None,
    drained: Annotated[bool, typer.Option("--drained", help="Only those the portal drained.")] = False,
    node: Annotated[str | None, typer.Option(help="One node's.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100000)] = 1000,
    as_json: JsonOption = False,
) -> None:
    """A cluster's GPUs with their health (platform admins and auditors)."""
    params = {"health": health, "node": node, "drained": "true" if drained else None}
    found = client().fleet(cluster, "gpus", {k: v for k, v in params.items() if v}, limit)
    if as_json:
        print_json(found)
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("NODE", "GPU", "UUID", "HEALTH", "DRAINED", "TEMP", "POWER", "UTIL", "JOB", "REASON"):
        table.add_column(column, overflow="fold" if column == "REASON" else "ellipsis")
    for gpu in found:
        table.add_row(
            gpu["node"],
            str(gpu["index"]),
            gpu["uuid"],
            gpu["health"],
            "yes" if gpu["drained_by_portal"] else "",
            _measure(gpu["temperature_c"], "°C"),
            _measure(gpu["power_w"], "W"),
            _measure(gpu["utilisation_pct"], "%"),
            str(gpu["job"] or ""),
            gpu["health_reason"],
        )
    out.print(table)


@app.command("gpu-history")
@reports_errors
def gpu_history(
    cluster: Annotated[str, typer.Argument(metavar="CLUSTER")],
    node: Annotated[str | None, typer.Option(help="One node's.")] = None,
    gpu: Annotated[str | None, typer.Option(help="One GPU's, by UUID.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100000)] = 100,
    as_json: JsonOption = False,
) -> None:
    """A cluster's hardware history, newest first: health changes, drains and resumes."""
    params = {"node": node, "gpu_uuid": gpu}
    found = client().fleet(cluster, "health-events", {k: v for k, v in params.items() if v}, limit)
    if as_json:
        print_json(found)
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("AT", "NODE", "GPU", "WHAT", "REASON"):
        table.add_column(column, overflow="fold" if column == "REASON" else "ellipsis")
    for event in found:
        what = event["health"] if event["kind"] == "health" else event["kind"]
        where = event["gpu_uuid"] or "exporter"
        table.add_row(event["at"], event["node"], where, what, event["reason"])
    out.print(table)


def _measure(value: float | None, unit: str) -> str:
    return "" if value is None else f"{value:.0f} {unit}"


@app.command()
@reports_errors
def status(job_id: Annotated[int, typer.Argument(metavar="ID")], as_json: JsonOption = False) -> None:
    """One job: its state, where it runs, why it waits, how it ended."""
    job = client().job(job_id)
    if as_json:
        print_json(job)
        return
    fields = [
        ("job", f"{job['id']} {job['name']}"),
        ("array", f"task {job['array_index']} of array {job['array']}" if job.get("array") else None),
        ("tenant", f"{job['tenant']} (owner {job['owner']})"),
        ("state", job["state"] + (f": {job['reason']}" if job["reason"] else "")),
        ("gpus", f"{job['gpu_count']}×{job['gpu_type']}, {job['cpus']} CPUs, {job['memory_gb']} GB"),
        ("cluster", job["cluster"] or "not placed yet"),
        ("queue position", job["queue_position"]),
        ("started", job["started_at"]),
        ("ended", job["ended_at"]),
        ("exit code", job["exit_code"]),
    ]
    for label, value in fields:
        if value not in (None, ""):
            out.print(f"{label:>15}  {value}", markup=False)


@app.command()
@reports_errors
def logs(
    job_id: Annotated[int, typer.Argument(metavar="ID")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the job ends.")] = False,
    as_json: JsonOption = False,
) -> None:
    """The job's output; with -f, as it is written, until the job ends."""
    api, offset, text = client(), 0, []
    while True:
        chunk = api.logs(job_id, offset)
        if chunk["text"]:
            if as_json:
                text.append(chunk["text"])
            else:
                sys.stdout.write(chunk["text"])
                sys.stdout.flush()
        moved = chunk["next_offset"] != offset
        offset = chunk["next_offset"]
        if chunk["complete"] or (not follow and not moved):
            break
        if not moved:
            time.sleep(POLL_SECONDS)
    if as_json:
        print_json(
            {"id": job_id, "text": "".join(text), "next_offset": offset, "complete": chunk["complete"]}
        )


@app.command()
@reports_errors
def cancel(
    job_id: Annotated[int, typer.Argument(metavar="ID")],
    whole_array: Annotated[
        bool, typer.Option("--array", help="ID is an array: cancel every task of it not ended yet.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Cancel a job or one task of an array (yours, or any of your tenant's if you are its admin);
    with --array, a whole array."""
    if whole_array:
        array = client().cancel_array(job_id)
        if as_json:
            print_json(array)
        else:
            out.print(f"Cancelling array {job_id}: {array['active']} tasks still stopping", markup=False)
        return
    job = client().cancel(job_id)
    if as_json:
        print_json(job)
    elif job["state"] == "cancelled":
        out.print(f"Cancelled job {job_id}", markup=False)
    else:
        out.print(f"Cancelling job {job_id}: its cluster is stopping it", markup=False)


@app.command()
@reports_errors
def wait(
    job_id: Annotated[int, typer.Argument(metavar="ID")],
    timeout: Annotated[float | None, typer.Option(help="Give up after this many seconds (exit 1).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Wait for a job to end; exit with its exit code (0 when it succeeded)."""
    job = wait_until_done(client(), job_id, quiet=as_json, timeout=timeout)
    if as_json:
        print_json(job)
    raise typer.Exit(exit_code_of(job))


def wait_until_done(api: Client, job_id: int, *, quiet: bool, timeout: float | None = None) -> dict:
    """Poll the job until it ends, showing its state and why it waits: a spinner on a terminal,
    a line per change otherwise."""
    deadline = None if timeout is None else time.monotonic() + timeout
    shown = None
    spinner = err.status("") if err.is_terminal and not quiet else None
    if spinner:
        spinner.start()
    try:
        while True:
            job = api.job(job_id)
            line = f"job {job_id}: {job['state']}" + (f" ({job['reason']})" if job["reason"] else "")
            if spinner:
                spinner.update(line)
            elif not quiet and line != shown:
                err.print(line, markup=False)
            shown = line
            if job["state"] in TERMINAL:
                break
            if deadline is not None and time.monotonic() >= deadline:
                raise CliError(f"job {job_id} is still {job['state']} after {timeout:g} s")
            time.sleep(POLL_SECONDS)
    finally:
        if spinner:
            spinner.stop()
    if spinner:
        err.print(shown, markup=False)
    return job


def exit_code_of(job: dict) -> int:
    if job["state"] == "failed":
        code = job.get("exit_code")
        return code if isinstance(code, int) and 0 < code < 256 else 1
    return WAIT_EXIT_CODES.get(job["state"], 1)


def main() -> None:
    app()
