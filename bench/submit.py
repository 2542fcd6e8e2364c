"""How many jobs per second the public API accepts, on PostgreSQL, behind the real ASGI server.

    .venv/bin/python bench/submit.py [--workers N] [--duration S] [--warmup S] [--conn-max-age S]

Self-contained: it creates a fresh PostgreSQL database (`factory_bench`), migrates and seeds it
(tenant, GPU types, a local cluster with pools, a member user and an API token), starts the web
server (`python -m factory.serve`: uvicorn workers serving `factory.asgi:application`) as a
subprocess and drives `POST /api/v1/jobs/` with 1, 8 and 32
concurrent keep-alive clients (each request with its own Idempotency-Key). Every answer must be a
202; anything else counts as an error. Celery tasks enqueued on commit go to Redis DB 14, which is
purged before and after; no worker runs, since this measures acceptance only. At the end it stops
the server, drops the database, and prints one JSON object as its last line.

The load generator is a small HTTP/1.1 keep-alive client over asyncio streams (on uvloop when
available) that sends pre-built request bytes. Its own CPU time per request is printed so it can
be seen that it is not the bottleneck (it shares the machine with the server and PostgreSQL).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

import psycopg
from support import benchdb
from support.portal import (
    HOST,
    DbWatch,
    Window,
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

DB_NAME = "factory_bench"
DATABASE_URL = benchdb.url(DB_NAME)
REDIS_URL = "redis://127.0.0.1:6379/14"
TENANT = "bench-lab"
CONCURRENCY_LEVELS = (1, 8, 32)

# Workers: 2, one per core (server, PostgreSQL and the load generator share the two cores). A
# uvicorn process runs Python on one core at a time (the GIL), so a second process is what lets the
# server use the second core. Each process serves the API from FACTORY_SYNC_THREADS threads (default
# 2; more threads only contend for the GIL: one process alone measured 175, 162 and 153 jobs/s at
# 8 clients with 2, 4 and 8 threads).
DEFAULT_WORKERS = 2


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


async def run_levels(port: int, token: str, args: argparse.Namespace, server_pid: int) -> list[Window]:
    windows = []
    watch = await DbWatch.open(DB_NAME)
    try:
        for clients in CONCURRENCY_LEVELS:
            window = await measure(
                port, token, TENANT, clients, args.warmup, args.duration, server_pid, watch
            )
            log(describe(window))
            if window.errors:
                log(f"   non-202 answers: {window.statuses}")
            windows.append(window)
    finally:
        await watch.close()
    return windows


# --- the run --------------------------------------------------------------------------------------


def summary(windows: list[Window], args: argparse.Namespace, extra: dict) -> dict:
    by_clients = {w.clients: w for w in windows}
    result = {f"jobs_per_s_{n}": round(by_clients[n].per_second, 1) for n in CONCURRENCY_LEVELS}
    for n in CONCURRENCY_LEVELS:
        result[f"p50_ms_{n}"] = round(by_clients[n].percentile_ms(0.50), 2)
        result[f"p99_ms_{n}"] = round(by_clients[n].percentile_ms(0.99), 2)
    result.update(
        server_workers=args.workers,
        db_conn_max_age=args.conn_max_age,
        duration_s=args.duration,
        errors=sum(w.errors for w in windows),
        errors_by_clients={n: by_clients[n].errors for n in CONCURRENCY_LEVELS},
        db_connections_peak=max(w.db_connections_peak for w in windows),
        new_db_connections_per_job_8=round(by_clients[8].db_connections / max(by_clients[8].accepted, 1), 2),
        cpu_ms_per_job_8={key: round(by_clients[8].cpu_ms_per_job(key), 2) for key in by_clients[8].cpu},
        machine_busy_percent_8=round(by_clients[8].busy_percent()),
        **extra,
    )
    return result


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="uvicorn worker processes")
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per level")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds per level")
    parser.add_argument("--conn-max-age", type=int, default=60, help="DB_CONN_MAX_AGE for the server")
    parser.add_argument(
        "--pool-size", type=int, default=8, help="DB_POOL_MAX_SIZE per server process (0: no pool)"
    )
    return parser.parse_args()


def run(args: argparse.Namespace, var_dir: Path, loop_name: str) -> tuple[list[Window], dict]:
    env = server_env(
        DATABASE_URL,
        REDIS_URL,
        var_dir,
        # Under ASGI each request runs in a new thread and Django's connections are per thread, so
        # persistent connections (DB_CONN_MAX_AGE) never persist: every request would open one and
        # at 32 clients they reach max_connections. The settings therefore use psycopg's pool on
        # PostgreSQL (DB_POOL_MAX_SIZE, default 8 per process), which overrides DB_CONN_MAX_AGE;
        # `--pool-size 0` turns it off to compare.
        DB_CONN_MAX_AGE=str(args.conn_max_age),
        DB_POOL_MAX_SIZE=str(args.pool_size),
    )
    server_log = var_dir / "server.log"
    log(f"Creating database {DB_NAME}, migrating and seeding ...")
    benchdb.recreate(DB_NAME)
    server = None
    try:
        token = migrate_and_seed(env, TENANT)["TOKEN"]
        purge_redis(REDIS_URL)
        port = free_port()
        log(f"Starting factory.serve, {args.workers} worker(s), on {HOST}:{port} (client loop: {loop_name})")
        server = start_server(env, port, args.workers, server_log)
        wait_for_port(port, server)
        windows = asyncio.run(run_levels(port, token, args, server.pid))
        stop_server(server)
        rows = count_rows()
        log(f"Database holds {rows['jobs']} jobs and {rows['events']} events (warm-ups included)")
        errors, first = server_log_summary(server_log)
        if errors:
            log(f"Server logged {errors} errors; the first: {first}")
        return windows, {
            "jobs_in_db": rows["jobs"],
            "events_in_db": rows["events"],
            "celery_messages": purge_redis(REDIS_URL),
            "server_log_errors": errors,
        }
    finally:
        if server is not None:
            stop_server(server)
        benchdb.drop(DB_NAME)
        purge_redis(REDIS_URL)


def main() -> int:
    args = parse_args()
    loop_name = install_uvloop()
    with tempfile.TemporaryDirectory(prefix="factory-bench-") as tmp:
        var_dir = Path(tmp)
        (var_dir / "staticfiles").mkdir()
        windows, extra = run(args, var_dir, loop_name)
    log(json.dumps(summary(windows, args, extra)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
