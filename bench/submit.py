"""How many jobs per second the public API accepts, on PostgreSQL, through the production web tier,
and, in the same run, through the portal's former server for comparison.

    .venv/bin/python bench/submit.py [--workers N] [--duration S] [--warmup S] [--only standard|custom]
    .venv/bin/python bench/submit.py --array [--array-size 1000] [--array-clients 4]

Self-contained: it creates a fresh PostgreSQL database (`factory_bench`), migrates and seeds it
(tenant, GPU types, a local cluster with pools, a member user and an API token), starts both web
tiers side by side and drives `POST /api/v1/jobs/` on each with 1, 8 and 32 concurrent keep-alive
clients (each request with its own Idempotency-Key), `--rounds` times per level, the tiers taking
turns so that a machine busy with something else for a while weighs on both; each figure is the
median round. Every answer must be a 202; anything else
counts as an error. The tiers:

* standard: the production topology (bench/support/topology.py): nginx in front, gunicorn gthread
  workers for the API (deploy/gunicorn.conf.py), uvicorn for the event streams. Its figures are
  the unsuffixed ones (`jobs_per_s_8`, ...) and `jobs_per_s_8_standard`.
* custom: `factory.serve`, the uvicorn-based server the portal ran before (its parent
  handing connections to the workers round-robin, Django's WSGI handler in a thread pool), with no
  proxy: `jobs_per_s_8_custom`. Its modules come from the last commit that had them and serve
  today's portal, so the two tiers run the same application and differ only in the server.

Celery tasks enqueued on commit go to Redis DB 14, which is purged before and after; no worker
runs, since this measures acceptance only. At the end it stops the servers, drops the database,
and prints one JSON object as its last line.

With --array it measures array submissions instead, on the standard tier: `--array-clients`
clients post arrays of `--array-size` tasks each (`"array": "0-999"`), and, in the same run and
with as many clients, single jobs; the last line then has `array_tasks_per_s` (tasks accepted per
second), `single_jobs_per_s` and their ratio `array_vs_single_ratio`, each the median of
`--rounds` rounds taken in turns.

The load generator is a small HTTP/1.1 keep-alive client over asyncio streams (on uvloop when
available) that sends pre-built request bytes. Its own CPU time per request is printed so it can
be seen that it is not the bottleneck (it shares the machine with the servers and PostgreSQL).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
from support import benchdb
from support.portal import (
    HOST,
    ROOT,
    DbWatch,
    Submitter,
    Window,
    client_loop,
    cpu_snapshot,
    free_port,
    install_uvloop,
    log,
    measure,
    migrate_and_seed,
    purge_redis,
    server_env,
    server_log_summary,
    start_server,
    stop_server,
    wait_for_port,
)
from support.topology import WebTier

DB_NAME = "factory_bench"
DATABASE_URL = benchdb.url(DB_NAME)
REDIS_URL = "redis://127.0.0.1:6379/14"
TENANT = "bench-lab"
CONCURRENCY_LEVELS = (1, 8, 32)

# Workers: 2, one per core (servers, PostgreSQL and the load generator share the two cores). A
# process runs Python on one core at a time (the GIL), so a second process is what lets the server
# use the second core. Each serves the API from FACTORY_SYNC_THREADS threads (default 2; more
# threads only contend for the GIL: the former server alone measured 175, 162 and 153 jobs/s at 8
# clients with 2, 4 and 8 threads).
DEFAULT_WORKERS = 2
TIERS = ("standard", "custom")


def count_rows() -> dict[str, int]:
    with psycopg.connect(DATABASE_URL) as conn:
        jobs = conn.execute("SELECT count(*) FROM jobs_job").fetchone()[0]
        events = conn.execute("SELECT count(*) FROM jobs_jobevent").fetchone()[0]
    return {"jobs": jobs, "events": events}


def describe(window: Window) -> str:
    jobs = max(window.accepted, 1)
    cpu = ", ".join(f"{key} {window.cpu_ms_per_job(key):.2f}" for key in window.cpu)
    return (
        f"{window.clients:>2} clients: {window.per_second:7.1f} jobs/s  "
        f"p50 {window.percentile_ms(0.50):6.1f} ms  p99 {window.percentile_ms(0.99):6.1f} ms  "
        f"errors {window.errors}\n    CPU ms per job: {cpu}; machine {window.busy_percent():.0f}% busy; "
        f"{window.db_connections / jobs:.2f} new DB connections per job, "
        f"up to {window.db_connections_peak} open"
    )


async def run_levels(
    tiers: dict[str, tuple[int, list[int]]], token: str, args: argparse.Namespace
) -> dict[str, list[Window]]:
    """Every level on every tier, `--rounds` times, the tiers taking turns (first one, then the
    other, level by level) so that a machine busier for a while weighs on both; each tier keeps
    the round with its median rate."""
    windows: dict[str, list[Window]] = {tier: [] for tier in tiers}
    watch = await DbWatch.open(DB_NAME)
    try:
        for clients in CONCURRENCY_LEVELS:
            tried: dict[str, list[Window]] = {tier: [] for tier in tiers}
            for round_ in range(args.rounds):
                order = list(tiers) if round_ % 2 == 0 else list(reversed(tiers))
                for tier in order:
                    port, pids = tiers[tier]
                    window = await measure(
                        port, token, TENANT, clients, args.warmup, args.duration, pids, watch
                    )
                    log(f"[{tier}] {describe(window)}")
                    if window.errors:
                        log(f"   non-202 answers: {window.statuses}")
                    tried[tier].append(window)
            for tier, rounds in tried.items():
                windows[tier].append(sorted(rounds, key=lambda w: w.per_second)[len(rounds) // 2])
    finally:
        await watch.close()
    return windows


# --- the run --------------------------------------------------------------------------------------


def level_figures(windows: list[Window], suffix: str = "") -> dict:
    by_clients = {w.clients: w for w in windows}
    result = {f"jobs_per_s_{n}{suffix}": round(by_clients[n].per_second, 1) for n in CONCURRENCY_LEVELS}
    for n in CONCURRENCY_LEVELS:
        result[f"p50_ms_{n}{suffix}"] = round(by_clients[n].percentile_ms(0.50), 2)
        result[f"p99_ms_{n}{suffix}"] = round(by_clients[n].percentile_ms(0.99), 2)
    return result


def summary(runs: dict[str, tuple[list[Window], dict]], args: argparse.Namespace) -> dict:
    """The standard tier's figures unsuffixed (as before), each tier's under its suffix, and how
    the two compare at 8 clients."""
    main = runs.get("standard") or runs["custom"]
    windows, extra = main
    by_clients = {w.clients: w for w in windows}
    result = level_figures(windows)
    for tier, (tier_windows, _) in runs.items():
        result.update(level_figures(tier_windows, f"_{tier}"))
    if len(runs) == 2:
        result["standard_vs_custom_8"] = round(
            result["jobs_per_s_8_standard"] / max(result["jobs_per_s_8_custom"], 1e-9), 3
        )
    result.update(
        tiers=list(runs),
        server_workers=args.workers,
        db_conn_max_age=args.conn_max_age,
        duration_s=args.duration,
        errors=sum(w.errors for tier_windows, _ in runs.values() for w in tier_windows),
        errors_by_clients={n: by_clients[n].errors for n in CONCURRENCY_LEVELS},
        db_connections_peak=max(w.db_connections_peak for w in windows),
        new_db_connections_per_job_8=round(by_clients[8].db_connections / max(by_clients[8].accepted, 1), 2),
        cpu_ms_per_job_8={key: round(by_clients[8].cpu_ms_per_job(key), 2) for key in by_clients[8].cpu},
        cpu_ms_per_job_8_by_tier={
            tier: {key: round(w.cpu_ms_per_job(key), 2) for key in w.cpu}
            for tier, (tier_windows, _) in runs.items()
            for w in tier_windows
            if w.clients == 8
        },
        machine_busy_percent_8=round(by_clients[8].busy_percent()),
        **extra,
    )
    return result


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="web worker processes")
    parser.add_argument("--duration", type=float, default=6.0, help="measured seconds per level")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds per level")
    parser.add_argument("--conn-max-age", type=int, default=60, help="DB_CONN_MAX_AGE for the server")
    parser.add_argument(
        "--pool-size", type=int, default=8, help="DB_POOL_MAX_SIZE per server process (0: no pool)"
    )
    parser.add_argument("--only", choices=TIERS, help="measure one web tier only")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per level and tier (median kept)")
    add_array_args(parser)
    return parser.parse_args()


# The former server's modules, taken from history, and what each import of the portal's own
# package becomes in the overlay: the former server runs today's portal (its settings, apps,
# middleware and views), so the two tiers differ only in the server in front.
FORMER_SERVER_MODULES = {
    "factory/serve.py": "serve.py",
    "factory/wsgi_bridge.py": "wsgi_bridge.py",
    "factory/asgi.py": "asgi.py",
    "factory/middleware.py": "body_limit.py",  # its `body_limit`, which today's middleware dropped
}
FORMER_SERVER_PACKAGE = "former_server"
FORMER_SERVER_IMPORTS = {
    '"factory.serve"': f'"{FORMER_SERVER_PACKAGE}.serve"',
    '"factory.asgi:application"': f'"{FORMER_SERVER_PACKAGE}.asgi:application"',
    "from factory.wsgi_bridge import": f"from {FORMER_SERVER_PACKAGE}.wsgi_bridge import",
    "from factory.middleware import body_limit": f"from {FORMER_SERVER_PACKAGE}.body_limit import body_limit",
}


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout


@contextlib.contextmanager
def former_server_overlay() -> Iterator[Path]:
    """A directory holding the package `former_server`: factory/serve.py, its WSGI bridge and the
    ASGI entry point that used it, as of the commit before the one that removed them, with their
    imports of one another pointed at the package. Put first on PYTHONPATH, it serves today's
    portal."""
    removed = git("rev-list", "-1", "HEAD", "--", "factory/serve.py").strip()
    if not removed:
        raise RuntimeError("factory/serve.py is in no commit of this repository's history")
    with tempfile.TemporaryDirectory(prefix="factory-former-server-") as tmp:
        package = Path(tmp) / FORMER_SERVER_PACKAGE
        package.mkdir()
        (package / "__init__.py").write_text("")
        for source, name in FORMER_SERVER_MODULES.items():
            text = git("show", f"{removed}^:{source}")
            for old, new in FORMER_SERVER_IMPORTS.items():
                text = text.replace(old, new)
            (package / name).write_text(text)
        log(f"The former server from commit {removed[:10]}^, serving today's portal")
        yield Path(tmp)


@contextlib.contextmanager
def standard_tier(env: dict[str, str], workers: int, var_dir: Path) -> Iterator[tuple[int, list[int]]]:
    log(f"Starting nginx → {workers} gunicorn servers (1 gthread worker each) + uvicorn")
    tier = WebTier(env, var_dir, workers=workers)
    try:
        tier.start()
        yield tier.port, tier.pids()
    finally:
        tier.stop()


@contextlib.contextmanager
def custom_tier(env: dict[str, str], workers: int, var_dir: Path) -> Iterator[tuple[int, list[int]]]:
    with former_server_overlay() as overlay:
        port = free_port()
        log(f"Starting {FORMER_SERVER_PACKAGE}.serve, {workers} worker(s), on {HOST}:{port}")
        env = {
            **env,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(overlay), str(ROOT), env.get("PYTHONPATH")])),
        }
        server = start_server(
            env, port, workers, var_dir / "server.log", module=f"{FORMER_SERVER_PACKAGE}.serve"
        )
        try:
            wait_for_port(port, server)
            yield port, [server.pid]
        finally:
            stop_server(server)


def bench_env(args: argparse.Namespace, var_dir: Path) -> dict[str, str]:
    """The servers' environment, the same for every mode of this bench."""
    return server_env(
        DATABASE_URL,
        REDIS_URL,
        var_dir,
        # The settings use psycopg's pool on PostgreSQL (DB_POOL_MAX_SIZE, default 8 per process),
        # which overrides DB_CONN_MAX_AGE; `--pool-size 0` turns it off to compare.
        DB_CONN_MAX_AGE=str(args.conn_max_age),
        DB_POOL_MAX_SIZE=str(args.pool_size),
        FORWARDED_ALLOW_IPS=HOST,
    )


def run(args: argparse.Namespace, var_dir: Path) -> dict[str, tuple[list[Window], dict]]:
    env = bench_env(args, var_dir)
    log(f"Creating database {DB_NAME}, migrating and seeding ...")
    benchdb.recreate(DB_NAME)
    try:
        token = migrate_and_seed(env, TENANT)["TOKEN"]
        purge_redis(REDIS_URL)
        with contextlib.ExitStack() as stack:
            tiers = {}
            for tier in [args.only] if args.only else TIERS:
                start = standard_tier if tier == "standard" else custom_tier
                tiers[tier] = stack.enter_context(start(env, args.workers, var_dir))
            windows = asyncio.run(run_levels(tiers, token, args))
        rows = count_rows()
        log(f"Database holds {rows['jobs']} jobs and {rows['events']} events (warm-ups included)")
        errors = 0
        for server_log in var_dir.glob("*.log"):
            count, first = server_log_summary(server_log)
            if count:
                log(f"{server_log.name} logged {count} errors; the first: {first}")
            errors += count
        extra = {
            "jobs_in_db": rows["jobs"],
            "events_in_db": rows["events"],
            "celery_messages": purge_redis(REDIS_URL),
            "server_log_errors": errors,
        }
        return {tier: (tier_windows, extra) for tier, tier_windows in windows.items()}
    finally:
        benchdb.drop(DB_NAME)
        purge_redis(REDIS_URL)


# --- --array: tasks accepted per second through array submissions -----------------------------------


def add_array_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--array", action="store_true", help="measure array submissions against single jobs")
    parser.add_argument("--array-size", type=int, default=1000, help="tasks per array submission")
    parser.add_argument("--array-clients", type=int, default=4, help="concurrent clients, for both kinds")


class ArraySubmitter(Submitter):
    """A client that posts arrays of `size` tasks, each request with its own Idempotency-Key."""

    def __init__(self, port: int, token: str, run_id: str, tenant: str, size: int) -> None:
        super().__init__(port, token, run_id, tenant)
        spec = {**json.loads(self.body), "name": "bench-array", "array": f"0-{size - 1}"}
        self.body = json.dumps(spec).encode()
        self.head = (
            f"POST /api/v1/jobs/ HTTP/1.1\r\nHost: {HOST}:{port}\r\nAuthorization: Token {token}\r\n"
            f"Content-Type: application/json\r\nAccept: application/json\r\n"
            f"Content-Length: {len(self.body)}\r\nIdempotency-Key: "
        ).encode()


async def measure_kind(
    port: int, token: str, clients: int, args: argparse.Namespace, pids: list[int], watch: DbWatch, size: int
) -> Window:
    """`clients` clients post for `--warmup` + `--duration` seconds: arrays of `size` tasks, or
    single jobs (size 0); the window is the last `--duration` seconds."""
    run_id = f"a{size}-{os.getpid()}-{time.time_ns()}"
    submitters = [
        ArraySubmitter(port, token, run_id, TENANT, size) if size else Submitter(port, token, run_id, TENANT)
        for _ in range(clients)
    ]
    await asyncio.gather(*(s.connect() for s in submitters))
    window = Window(clients)
    measure_from = time.perf_counter() + args.warmup
    until = measure_from + args.duration
    loops = [asyncio.create_task(client_loop(s, window, measure_from, until)) for s in submitters]
    await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
    started, before = time.perf_counter(), cpu_snapshot(pids)
    _, stuck = await asyncio.wait(loops, timeout=args.duration + 60)
    for loop in stuck:
        loop.cancel()
        window.errors += 1
    window.cpu_wall = time.perf_counter() - started
    window.cpu = {key: value - before[key] for key, value in cpu_snapshot(pids).items()}
    window.seconds = args.duration
    await asyncio.gather(*(s.close() for s in submitters))
    return window


async def array_rounds(port: int, token: str, pids: list[int], args: argparse.Namespace) -> dict[str, Window]:
    """Arrays and single jobs, in turns, `--rounds` times; the median round of each is kept."""
    tried: dict[str, list[Window]] = {"array": [], "single": []}
    watch = await DbWatch.open(DB_NAME)
    try:
        for round_ in range(args.rounds):
            kinds = ["array", "single"] if round_ % 2 == 0 else ["single", "array"]
            for kind in kinds:
                size = args.array_size if kind == "array" else 0
                window = await measure_kind(port, token, args.array_clients, args, pids, watch, size)
                per_s = window.per_second * (size or 1)
                log(
                    f"[{kind}] {args.array_clients} clients: {per_s:9.1f} {'tasks' if size else 'jobs'}/s "
                    f"({window.per_second:.1f} requests/s, p50 {window.percentile_ms(0.5):.1f} ms, "
                    f"errors {window.errors} {window.statuses if window.errors else ''})"
                )
                tried[kind].append(window)
    finally:
        await watch.close()
    return {
        kind: sorted(rounds, key=lambda w: w.per_second)[len(rounds) // 2] for kind, rounds in tried.items()
    }


def run_arrays(args: argparse.Namespace, var_dir: Path) -> dict:
    env = bench_env(args, var_dir)
    log(f"Creating database {DB_NAME}, migrating and seeding ...")
    benchdb.recreate(DB_NAME)
    try:
        token = migrate_and_seed(env, TENANT)["TOKEN"]
        purge_redis(REDIS_URL)
        with standard_tier(env, args.workers, var_dir) as (port, pids):
            windows = asyncio.run(array_rounds(port, token, pids, args))
        rows = count_rows()
        arrays, single = windows["array"], windows["single"]
        tasks_per_s = arrays.per_second * args.array_size
        result = {
            "array_tasks_per_s": round(tasks_per_s, 1),
            "single_jobs_per_s": round(single.per_second, 1),
            "array_vs_single_ratio": round(tasks_per_s / max(single.per_second, 1e-9), 1),
            "array_size": args.array_size,
            "clients": args.array_clients,
            "server_workers": args.workers,
            "array_p50_ms": round(arrays.percentile_ms(0.5), 1),
            "single_p50_ms": round(single.percentile_ms(0.5), 1),
            "cpu_ms_per_task": {
                k: round(1000 * v / max(arrays.accepted * args.array_size, 1), 3)
                for k, v in arrays.cpu.items()
            },
            "errors": arrays.errors + single.errors,
            "jobs_in_db": rows["jobs"],
            "celery_messages": purge_redis(REDIS_URL),
        }
        errors = 0
        for server_log in var_dir.glob("*.log"):
            count, first = server_log_summary(server_log)
            if count:
                log(f"{server_log.name} logged {count} errors; the first: {first}")
            errors += count
        result["server_log_errors"] = errors
        return result
    finally:
        benchdb.drop(DB_NAME)
        purge_redis(REDIS_URL)


def main() -> int:
    args = parse_args()
    log(f"Client loop: {install_uvloop()}")
    with tempfile.TemporaryDirectory(prefix="factory-bench-") as tmp:
        var_dir = Path(tmp)
        (var_dir / "staticfiles").mkdir()
        if args.array:
            log(json.dumps(run_arrays(args, var_dir)))
            return 0
        runs = run(args, var_dir)
    log(json.dumps(summary(runs, args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
