"""Slurm's command-line tools as the portal runs them, and readers of what they print.

The portal's workers act as a Slurm submit host (munge-authenticated CLI). Every call is an
argument list, never a shell string, run with only the harmless part of the worker's environment;
a failure is either the request's fault (JobRejected) or an outage to retry (BackendUnavailable).
What acts for a job's owner (sbatch, scancel, the job directory helper) runs as that owner through
`sudo -n -u <owner>`, which the site's sudo rule allows for exactly those programs; draining and
resuming nodes runs the node-state helper through `sudo -n -u <SlurmUser or root>`, which the rule
allows for that one program; the rest (squeue, sacct, scontrol, sinfo, sacctmgr) runs as the
worker itself.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import time
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from ..base import (
    POSIX_USERNAME,
    BackendError,
    BackendUnavailable,
    BadIndexes,
    JobRejected,
    PoolHealth,
    expand_indexes,
)

log = logging.getLogger(__name__)

# A name that can be an option value of the tools (partition, account, GPU type, cluster).
SAFE_TOKEN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
CONFIG_CACHE_SECONDS = 300
DEFAULT_MAX_ARRAY_SIZE = 1001
_CONFIG: dict[str, tuple[dict[str, str], float]] = {}
# What the CLI tools themselves may see of the worker's environment (never its secrets).
CLI_ENV_KEYS = ("PATH", "SLURM_CONF", "LANG", "LC_ALL", "TZ", "HOME", "USER", "LOGNAME")

UNREACHABLE = (
    "unable to contact slurm controller",
    "socket timed out",
    "connection refused",
    "slurm_load_jobs error",
    "slurmctld",
    "zero bytes were transmitted",
    "communication connection failure",
    "unable to establish connection",
    "munge",
)
REFUSED = (
    "invalid account",
    "invalid partition",
    "requested node configuration is not available",
    "invalid generic resource",
    "invalid gres",
    "job violates accounting/qos policy",
    "invalid qos",
    "memory specification can not be satisfied",
    "requested time limit is invalid",
    "more processors requested than permitted",
    "invalid feature specification",
)


class SlurmCLI:
    """The tools of one cluster: sbatch, squeue, sacct, scontrol, scancel, sinfo and sacctmgr."""

    def __init__(self, cluster_slug: str, *, bin_dir: str | None = None, timeout: float = 30.0) -> None:
        self.cluster_slug = cluster_slug
        self.bin_dir = bin_dir  # where sbatch & co. live, if not on PATH
        self.timeout = timeout

    def run(
        self, argv: list[str], *, stdin: str | None = None, check: bool = True, as_user: str | None = None
    ) -> str:
        result = self.execute(argv, stdin=stdin, as_user=as_user)
        if result.returncode != 0 and check:
            refusal = sudo_refusal(result.stderr) if as_user is not None else ""
            if refusal:
                raise JobRejected(f"sudo may not run {argv[0]} as {as_user}: {refusal}")
            raise classify_error(argv[0], result.stderr or result.stdout)
        return result.stdout

    def run_as_admin(self, argv: list[str], user: str) -> subprocess.CompletedProcess:
        """Run the site's node-state helper as a Slurm administrator (`user`: SlurmUser or root)
        through the sudo rule that allows exactly it. Answers how it ended when the helper ran;
        raises when sudo would not run it."""
        result = self.execute(argv, sudo_as=user)
        refusal = sudo_refusal(result.stderr) if result.returncode != 0 else ""
        if refusal:
            raise BackendError(f"sudo may not run {argv[0]} as {user}: {refusal}")
        return result

    def execute(
        self,
        argv: list[str],
        *,
        stdin: str | None = None,
        as_user: str | None = None,
        sudo_as: str | None = None,
    ) -> subprocess.CompletedProcess:
        """Run one tool, as the worker or (through sudo) as the POSIX user `as_user` (a job's
        owner) or `sudo_as` (an administrator, for the node-state helper), and answer with how it
        ended, whatever that was: the one I/O seam."""
        command = [self.program(argv[0]), *argv[1:]]
        if as_user is not None:
            if not POSIX_USERNAME.fullmatch(as_user) or as_user == "root":
                raise JobRejected(f"{as_user!r} is not a POSIX user jobs may run as")
            sudo_as = as_user
        if sudo_as is not None:
            if not POSIX_USERNAME.fullmatch(sudo_as):
                raise BackendError(f"{sudo_as!r} is not a POSIX user name")
            # -n: fail rather than wait for a password when the rule does not allow it.
            command = ["sudo", "-n", "-u", sudo_as, "--", *command]
        env = {k: os.environ[k] for k in CLI_ENV_KEYS if k in os.environ}
        try:
            return subprocess.run(
                command,
                input=stdin,
                capture_output=True,
                text=True,
                timeout=self.timeout,
                env=env,
                cwd="/",  # not the worker's directory, which the job's owner may not enter
                check=False,
            )
        except FileNotFoundError:
            raise BackendUnavailable(f"{command[0]} is not installed on this worker") from None
        except subprocess.TimeoutExpired:
            raise BackendUnavailable(f"{argv[0]} did not answer within {self.timeout:g} s") from None

    def program(self, tool: str) -> str:
        """The tool's full path: sudo's rules name programs by their full path."""
        if os.path.isabs(tool):
            return tool
        if self.bin_dir:
            return os.path.join(self.bin_dir, tool)
        return shutil.which(tool, path=os.environ.get("PATH", os.defpath)) or tool

    def squeue(self) -> list[dict]:
        """Every job slurmctld still holds (finished ones too, until MinJobAge)."""
        out = self.run(["squeue", "--json"])
        try:
            data = json.loads(out)
        except json.JSONDecodeError as exc:
            raise BackendUnavailable(f"squeue --json gave unreadable output: {exc}") from None
        # With slurmctld down, 22.05 exits 0 with an empty job list and the failure in "errors":
        # taken at face value, every job would look lost.
        errors = data.get("errors") or []
        if errors:
            detail = "; ".join(
                f"{e.get('source', '')}: {e.get('description', e.get('error', ''))}" for e in errors
            )
            raise BackendUnavailable(f"squeue failed: {detail}")
        return data.get("jobs", [])

    def sacct(self, *args: str, check: bool = True) -> str:
        """One allocation line per job (-X), parseable (-P), all users' jobs (-a)."""
        return self.run(["sacct", "-X", "-n", "-P", "-a", *args], check=check)

    def accounting_enabled(self) -> bool:
        """Whether slurmdbd keeps accounting (sacct works)."""
        return self.controller_config()["AccountingStorageType"] != "accounting_storage/none"

    def max_array_size(self) -> int:
        """Array indexes must be below this (MaxArraySize, 1001 unless the site sets it)."""
        value = self.controller_config().get("MaxArraySize", "")
        return int(value) if value.isdigit() else DEFAULT_MAX_ARRAY_SIZE

    def controller_config(self) -> dict[str, str]:
        """What the portal needs of the controller's config, read with `scontrol show config` and
        remembered per cluster for a while, since an adapter lives for one task or sync."""
        cached = _CONFIG.get(self.cluster_slug)
        if cached and cached[1] > time.monotonic():
            return cached[0]
        out = self.run(["scontrol", "show", "config"])  # unreachable controller: unknown, not "no"
        config = {
            key: match[1]
            for key in ("AccountingStorageType", "ClusterName", "MaxArraySize")
            if (match := re.search(rf"^{key}\s*=\s*(\S+)", out, re.MULTILINE))
        }
        if "AccountingStorageType" not in config:
            raise BackendUnavailable("scontrol show config did not name the accounting storage")
        _CONFIG[self.cluster_slug] = (config, time.monotonic() + CONFIG_CACHE_SECONDS)
        return config


def sudo_refusal(stderr: str) -> str:
    """What sudo said when it would not run a program as the user asked for (no rule allows it,
    no such user), as opposed to the program's own errors, which it prefixes with its name."""
    lines = [line.strip() for line in stderr.splitlines()]
    return "; ".join(line for line in lines if line.startswith(("sudo:", "Sorry, user")))


def classify_error(tool: str, message: str) -> BackendError:
    text = message.strip() or f"{tool} failed"
    lowered = text.lower()
    if any(marker in lowered for marker in REFUSED) or "invalid job id" in lowered:
        return JobRejected(text)
    if any(marker in lowered for marker in UNREACHABLE):
        return BackendUnavailable(text)
    # Neither an outage nor the job's fault: dispatch retries it a few times with backoff, then
    # fails the job as a platform fault, rather than retrying for ever or blaming the job.
    log.warning("unrecognised %s error: %s", tool, text)
    return BackendError(text)


# --- reading their output ------------------------------------------------------------------------


def job_state(entry: dict) -> str:
    """The state of a squeue --json entry."""
    state = entry.get("job_state", "")
    if isinstance(state, list):  # newer Slurm gives a list of flags
        state = state[0] if state else ""
    return str(state).upper()


def number(value) -> int | None:
    """A number of squeue --json, plain or (newer Slurm) {"set": true, "number": ...}."""
    if isinstance(value, dict):
        value = value.get("number") if value.get("set", True) else None
    return None if value is None else int(value)


def job_keys(entry: dict) -> list[str]:
    """The ids the portal knows an entry of squeue --json by: a job's id, an array task's
    "<array job id>_<index>", or for the record of an array's tasks not started yet, each of
    theirs ("array_task_string" says which: "2-999%50")."""
    array_job = number(entry.get("array_job_id"))
    if not array_job:
        return [str(entry["job_id"])]
    task = number(entry.get("array_task_id"))
    if task is not None:
        return [f"{array_job}_{task}"]
    waiting = str(entry.get("array_task_string") or "").partition("%")[0]
    try:
        return [f"{array_job}_{index}" for index in expand_indexes(waiting)] if waiting else []
    except BadIndexes:
        return []


def epoch(value) -> datetime | None:
    if isinstance(value, dict):  # newer Slurm: {"set": true, "number": ...}
        value = value.get("number") if value.get("set", True) else None
    if not value:
        return None
    return datetime.fromtimestamp(int(value), tz=UTC)


def wait_status(value) -> int | None:
    """squeue --json gives the raw wait status: 768 for `exit 3`, 9 for SIGKILL."""
    if isinstance(value, dict):
        value = value.get("return_code", {}).get("number") if "return_code" in value else value.get("number")
    if value is None:
        return None
    value = int(value)
    if value & 0x7F:
        return 128 + (value & 0x7F)
    return value >> 8


def local_time(text: str, timezone: str) -> datetime | None:
    """A timestamp sacct prints in the controller's time zone, in UTC."""
    if not text or text in {"Unknown", "None"}:
        return None
    naive = datetime.fromisoformat(text)
    return naive.replace(tzinfo=ZoneInfo(timezone)).astimezone(UTC)


def sacct_exit_code(text: str) -> int | None:
    """sacct's `code:signal`; a job killed by a signal reports 128 + signal, like a shell."""
    code, _, signal = text.partition(":")
    if not code.isdigit():
        return None
    if signal.isdigit() and int(signal) and not int(code):
        return 128 + int(signal)
    return int(code)


def gpu_tres(text: str) -> dict[str, int]:
    """'cpu=4,gres/gpu:h100=3' → {'h100': 3} (typed GPU TRES only)."""
    counts = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        if name.startswith("gres/gpu:") and value.isdigit():
            counts[name.removeprefix("gres/gpu:")] = int(value)
    return counts


# What health() asks sinfo for, one line per node and partition.
NODE_FIELDS = "NodeList:|,Partition:|,Gres:|,GresUsed:|,CPUs:|,Memory:|,StateLong"


def gpu_capacity(nodes_text: str, topology: tuple[str, dict[str, str]] | None = ("", {})) -> list[PoolHealth]:
    """GPUs per (partition, type), and the node shape of each, from `sinfo -N -O NODE_FIELDS`:
    how many nodes have such GPUs, and the largest one's GPUs, CPUs and memory (MB); with the
    site's `topology` (node_switches; None: not read), its nodes by the switch or block they are
    under."""
    level, switch_of = topology if topology is not None else (None, {})
    totals: dict[str, dict[str, int]] = {}
    domains: dict[str, dict[str, list[str]]] = {}
    for line in nodes_text.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) < 4:
            continue
        node, partition, gres, used = parts[:4]
        cpus, memory = (parts[4], parts[5]) if len(parts) >= 7 else ("", "")
        for gpu_type, count in _gres_counts(gres).items():
            key = f"{partition.rstrip('*')}/{gpu_type}"
            entry = totals.setdefault(key, dict.fromkeys(("cap", "used", "nodes", "gpus", "cpus", "mem"), 0))
            if node in switch_of:
                domains.setdefault(key, {}).setdefault(switch_of[node], []).append(node)
            entry["cap"] += count
            entry["used"] += _gres_counts(used).get(gpu_type, 0)
            entry["nodes"] += 1
            entry["gpus"] = max(entry["gpus"], count)
            entry["cpus"] = max(entry["cpus"], int(cpus) if cpus.isdigit() else 0)
            entry["mem"] = max(entry["mem"], int(memory) if memory.isdigit() else 0)
    return [
        PoolHealth(
            gpu_type=key,
            capacity=entry["cap"],
            in_use=entry["used"],
            nodes=entry["nodes"],
            gpus_per_node=entry["gpus"],
            cpus_per_node=entry["cpus"] or None,
            memory_mb_per_node=entry["mem"] or None,
            topology_level=None if level is None else level if key in domains else "",
            domains={name: tuple(nodes) for name, nodes in sorted(domains.get(key, {}).items())},
        )
        for key, entry in sorted(totals.items())
    ]


_TOPOLOGY_ENTRY = re.compile(r"^\s*(SwitchName|BlockName)=(\S+)")
_TOPOLOGY_FIELD = re.compile(r"(\w+)=(\S*)")


def node_switches(topology_text: str) -> tuple[str, dict[str, str]]:
    """From `scontrol show topology`: what a domain is ("switch" with topology/tree, "block" with
    topology/block) and, for each node, the lowest one it is under (its leaf switch, its block).
    Lines are `SwitchName=leaf2 Level=0 LinkSpeed=1 Nodes=gpu[2-3]` (upper switches list their
    leaves' nodes too, at a higher Level) or `BlockName=b1 BlockIndex=0 Nodes=n[01-04]`. No
    topology plugin: ("", {})."""
    entries = []
    for line in topology_text.splitlines():
        entry = _TOPOLOGY_ENTRY.match(line)
        if not entry:
            continue
        fields = dict(_TOPOLOGY_FIELD.findall(line))
        level = fields.get("Level", "0")
        nodes = expand_hostlist(fields.get("Nodes", ""))
        entries.append((int(level) if level.isdigit() else 0, entry[2], entry[1], nodes))
    kind, switch_of = "", {}
    for _level, name, what, nodes in sorted(entries, key=lambda e: e[0]):
        kind = kind or ("switch" if what == "SwitchName" else "block")
        for node in nodes:
            switch_of.setdefault(node, name)
    return kind, switch_of


def _gres_counts(text: str) -> dict[str, int]:
    """'gpu:h100:8(S:0)' or 'gpu:h100:2(IDX:0-1)' → {'h100': 8}."""
    counts: dict[str, int] = {}
    for item in text.split(","):
        match = re.match(r"gpu:([A-Za-z0-9._-]+):(\d+)", item.strip())
        if match:
            counts[match[1]] = counts.get(match[1], 0) + int(match[2])
    return counts


def expand_hostlist(text: str) -> tuple[str, ...]:
    """Slurm's compressed node lists, as squeue and sacct print them: "gpu[2-3],cpu1" → ("gpu2",
    "gpu3", "cpu1"); "None assigned" and "(null)" → ()."""
    names: list[str] = []
    for item in re.findall(r"[^,\[]+(?:\[[^\]]*\][^,\[]*)*", text or ""):
        item = item.strip()
        if not item or " " in item or item == "(null)":
            continue
        match = re.fullmatch(r"([^\[]*)\[([^\]]*)\](.*)", item)
        if not match:
            names.append(item)
            continue
        prefix, ranges, suffix = match.groups()
        for part in ranges.split(","):
            low, _, high = part.partition("-")
            if not high:
                names.append(f"{prefix}{low}{suffix}")
                continue
            if not (low.isdigit() and high.isdigit()) or int(high) - int(low) > 10000:
                continue
            names += [f"{prefix}{n:0{len(low)}d}{suffix}" for n in range(int(low), int(high) + 1)]
    return tuple(names)


def node_down(line: str) -> bool:
    """Whether a node of that sinfo output is down, drained or failing."""
    state = line.rsplit("|", 1)[-1].strip().lower()
    return any(word in state for word in ("down", "drain", "fail", "not_responding"))


# scripts/slurm-node-state's exit status for a node drained for a reason not the portal's.
NODE_NOT_OURS = 3
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def slurm_reason(reason: str) -> str:
    """A drain reason as Slurm keeps it: one line of at most 300 characters."""
    return _CONTROL.sub(" ", reason).strip()[:300]


def node_info(text: str) -> dict[str, str]:
    """State and Reason of `scontrol show node <node> --oneliner`. The reason is free text (it may
    hold spaces and '='), written last, before the "[user@time]" Slurm adds."""
    info = {}
    state = re.search(r"(?:^|\s)State=(\S+)", text)
    if state:
        info["State"] = state[1]
    reason = re.search(r"(?:^|\s)Reason=(.*?)(?:\s+\[[^\]]*\])?\s*$", text.strip(), re.S)
    if reason:
        info["Reason"] = reason[1]
    return info


_JOB_ID = re.compile(r"(?:^|\s)JobId=(\d+)")
_ARRAY_TASK = re.compile(r"(?:^|\s)ArrayJobId=(\d+) ArrayTaskId=(\d+)")
_JOB_STATE = re.compile(r"(?:^|\s)JobState=(\S+)")
_NODE_GRES = re.compile(r"(?:^|\s)Nodes=(\S+) CPU_IDs=\S+ Mem=\S+ GRES=(\S*)")


def job_gpu_indexes(text: str) -> dict[tuple[str, int], str]:
    """{(node, GPU index): job id} of running jobs, from `scontrol show job -d --oneliner`, whose
    detail lines say `Nodes=gpu1 CPU_IDs=0-3 Mem=0 GRES=gpu:h100:2(IDX:0-1)`. A task of an array
    is named as the portal knows it: "<array job id>_<index>"."""
    found: dict[tuple[str, int], str] = {}
    for line in text.splitlines():
        job, state = _JOB_ID.search(line), _JOB_STATE.search(line)
        if not job or not state or state[1] != "RUNNING":
            continue
        task = _ARRAY_TASK.search(line)
        name = f"{task[1]}_{task[2]}" if task else job[1]
        for nodes, gres in _NODE_GRES.findall(line):
            for index in _gres_indexes(gres):
                for node in expand_hostlist(nodes):
                    found[node, index] = name
    return found


def _gres_indexes(gres: str) -> list[int]:
    indexes: list[int] = []
    for match in re.finditer(r"IDX:([0-9,\-]+)", gres):
        for part in match[1].split(","):
            first, _, last = part.partition("-")
            if first.isdigit():
                indexes += range(int(first), int(last or first) + 1)
    return indexes
