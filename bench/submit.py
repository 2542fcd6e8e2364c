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
import contextlib
import itertools
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import redis
from support import benchdb, procstat

ROOT = Path(__file__).resolve().parent.parent
DB_NAME = "factory_bench"
DATABASE_URL = f"postgresql://postgres@127.0.0.1:5432/{DB_NAME}"
REDIS_URL = "redis://127.0.0.1:6379/14"
HOST = "127.0.0.1"
TENANT = "bench-lab"
CONCURRENCY_LEVELS = (1, 8, 32)
REQUEST_TIMEOUT = 30.0  # seconds past the window an unanswered request may take
EXCEPTION_LINE = re.compile(r"^[\w.]+(?:Error|Exception): .+$", re.MULTILINE)

# Workers: 2, one per core (server, PostgreSQL and the load generator share the two cores). A
# uvicorn process runs Python on one core at a time (the GIL), so a second process is what lets the
# server use the second core. Each process serves the API from FACTORY_SYNC_THREADS threads (default
# 2; more threads only contend for the GIL: one process alone measured 175, 162 and 153 jobs/s at
# 8 clients with 2, 4 and 8 threads).
DEFAULT_WORKERS = 2

SEED = """
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token
from factory.choices import ClusterKind, Role
from factory.models import Cluster, GpuType, Membership, Pool, Tenant

tenant = Tenant.objects.create(slug="TENANT_SLUG", name="Bench Lab")
h100 = GpuType.objects.create(slug="h100", name="NVIDIA H100 80GB", memory_gb=80, board_power_watts=700)
a100 = GpuType.objects.create(slug="a100", name="NVIDIA A100 80GB", memory_gb=80, board_power_watts=400)
cluster = Cluster.objects.create(slug="local", name="Bench machine", kind=ClusterKind.LOCAL)
Pool.objects.create(cluster=cluster, gpu_type=h100, capacity=8)
Pool.objects.create(cluster=cluster, gpu_type=a100, capacity=8)
user = get_user_model().objects.create_user("bench")
Membership.objects.create(user=user, tenant=tenant, role=Role.MEMBER)
print("TOKEN=" + Token.objects.create(user=user).key)
""".replace("TENANT_SLUG", TENANT)


def log(message: str) -> None:
    print(message, flush=True)


# --- environment, database, seed ----------------------------------------------------------------


def server_env(var_dir: Path, conn_max_age: int, pool_size: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=DATABASE_URL,
        REDIS_URL=REDIS_URL,
        SECRET_KEY="bench-only-not-a-secret-" + "x" * 40,
        DEBUG="0",
        SECURE_SSL_REDIRECT="0",
        ALLOWED_HOSTS=f"{HOST},localhost",
        # Under ASGI each request runs in a new thread and Django's connections are per thread, so
        # persistent connections (DB_CONN_MAX_AGE) never persist: every request would open one and
        # at 32 clients they reach max_connections. The settings therefore use psycopg's pool on
        # PostgreSQL (DB_POOL_MAX_SIZE, default 8 per process), which overrides DB_CONN_MAX_AGE;
        # `--pool-size 0` turns it off to compare.
        DB_CONN_MAX_AGE=str(conn_max_age),
        DB_POOL_MAX_SIZE=str(pool_size),
        FACTORY_VAR_DIR=str(var_dir),
        LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
    )
    return env


def manage(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args[:1])} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def migrate_and_seed(env: dict[str, str]) -> str:
    manage(env, "migrate", "--noinput", "-v0")
    output = manage(env, "shell", "-c", SEED)
    for line in output.splitlines():
        if line.startswith("TOKEN="):
            return line.removeprefix("TOKEN=")
    raise RuntimeError(f"The seed printed no token:\n{output}")


def count_rows() -> dict[str, int]:
    with psycopg.connect(DATABASE_URL) as conn:
        jobs = conn.execute("SELECT count(*) FROM jobs_job").fetchone()[0]
        events = conn.execute("SELECT count(*) FROM jobs_jobevent").fetchone()[0]
    return {"jobs": jobs, "events": events}


def purge_redis() -> int:
    """Empty the bench's Redis DB; returns how many Celery messages were waiting in it."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        waiting = int(client.llen("celery"))
        client.flushdb()
        return waiting
    finally:
        client.close()


# --- the server -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def start_server(env: dict[str, str], port: int, workers: int, log_path: Path) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "factory.serve",  # uvicorn workers, given connections round-robin
        f"--host={HOST}",
        f"--port={port}",
        f"--workers={workers}",
        "--log-level=warning",
    ]
    with log_path.open("ab") as log_file:
        return subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )


def wait_for_port(port: int, server: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with {server.returncode}")
        try:
            socket.create_connection((HOST, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the server did not listen on {port} within {timeout:.0f} s")


def stop_server(server: subprocess.Popen) -> None:
    if server.poll() is not None:
        return
    server.send_signal(signal.SIGINT)
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)  # its own session: only the server and its workers
        server.wait()


# --- CPU accounting (from /proc) ------------------------------------------------------------------


def cpu_snapshot(server_pid: int) -> dict[str, float]:
    """CPU seconds used so far by the server's process tree, PostgreSQL, Redis and this process."""
    table = procstat.processes()
    tree = {server_pid}
    for _ in range(3):
        tree |= {p.pid for p in table if p.ppid in tree}
    snapshot = {"server": 0.0, "postgres": 0.0, "redis": 0.0}
    for process in table:
        if process.pid in tree:
            snapshot["server"] += process.cpu_seconds
        elif process.name.startswith("postgres"):
            snapshot["postgres"] += process.cpu_seconds
        elif process.name.startswith("redis"):
            snapshot["redis"] += process.cpu_seconds
    usage = resource.getrusage(resource.RUSAGE_SELF)
    snapshot["client"] = usage.ru_utime + usage.ru_stime
    snapshot["machine"] = procstat.machine_busy_seconds()
    return snapshot


class DbWatch:
    """One monitoring connection, opened before the load starts (so it cannot be refused when the
    server uses up max_connections), to count and sample connections to the bench database."""

    def __init__(self, conn: psycopg.AsyncConnection) -> None:
        self.conn = conn

    @classmethod
    async def open(cls) -> DbWatch:
        return cls(await psycopg.AsyncConnection.connect(benchdb.url("postgres"), autocommit=True))

    async def close(self) -> None:
        await self.conn.close()

    async def scalar(self, sql: str) -> int:
        cursor = await self.conn.execute(sql, [DB_NAME])
        return int((await cursor.fetchone())[0])

    async def sessions(self) -> int:
        """Sessions (connections) PostgreSQL has opened on the bench database so far."""
        await self.conn.execute("SELECT pg_stat_clear_snapshot()")
        return await self.scalar("SELECT sessions FROM pg_stat_database WHERE datname = %s")

    async def peak_open(self, stop: asyncio.Event) -> int:
        """The most connections open to the bench database at once, sampled every 0.2 s."""
        peak = 0
        while not stop.is_set():
            peak = max(peak, await self.scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = %s"))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)
        return peak


# --- the load generator ---------------------------------------------------------------------------


class BadResponse(Exception):
    pass


@dataclass
class Window:
    """What one concurrency level measured."""

    clients: int
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    cpu_wall: float = 0.0
    db_connections: int = 0
    db_connections_peak: int = 0

    @property
    def accepted(self) -> int:
        return len(self.latencies)

    @property
    def per_second(self) -> float:
        return self.accepted / self.seconds if self.seconds else 0.0

    def cpu_ms_per_job(self, key: str) -> float:
        return 1000 * self.cpu.get(key, 0.0) / max(self.accepted, 1)

    def busy_percent(self) -> float:
        """How busy all cores were (everything on the machine) while this level ran."""
        return 100 * self.cpu.get("machine", 0.0) / (max(self.cpu_wall, 1e-9) * (os.cpu_count() or 1))

    def percentile_ms(self, q: float) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return 1000 * ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Submitter:
    """One keep-alive HTTP/1.1 connection that posts jobs; request bytes are built once."""

    keys = itertools.count()

    def __init__(self, port: int, token: str, run_id: str) -> None:
        self.port = port
        self.run_id = run_id
        body = json.dumps(
            {
                "tenant": TENANT,
                "name": "bench",
                "command": "echo hi",
                "gpu_type": "h100",
                "gpu_count": 1,
                "time_limit_minutes": 10,
            }
        ).encode()
        self.head = (
            f"POST /api/v1/jobs/ HTTP/1.1\r\nHost: {HOST}:{port}\r\nAuthorization: Token {token}\r\n"
            f"Content-Type: application/json\r\nAccept: application/json\r\n"
            f"Content-Length: {len(body)}\r\nIdempotency-Key: "
        ).encode()
        self.body = body
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        self.writer.transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None

    async def submit(self) -> int:
        if self.writer is None:
            await self.connect()
        key = f"{self.run_id}-{next(self.keys)}".encode()
        self.writer.write(self.head + key + b"\r\n\r\n" + self.body)
        status, keep_alive = await read_response(self.reader)
        if not keep_alive:
            await self.close()
        return status


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one response; returns (status, whether the connection stays open)."""
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 "):
        raise BadResponse(head[:80])
    status = int(head[9:12])
    headers = head.lower()
    start = headers.find(b"\r\ncontent-length:")
    if start >= 0:
        end = headers.index(b"\r\n", start + 2)
        await reader.readexactly(int(headers[start + 17 : end]))
    elif b"transfer-encoding: chunked" in headers:
        await read_chunked(reader)
    else:
        raise BadResponse(b"no length: " + head[:200])
    return status, b"connection: close" not in headers


async def read_chunked(reader: asyncio.StreamReader) -> None:
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        await reader.readexactly(size + 2)
        if size == 0:
            return


async def client_loop(submitter: Submitter, window: Window, measure_from: float, until: float) -> None:
    clock = time.perf_counter
    while (started := clock()) < until:
        try:
            status = await submitter.submit()
        except (OSError, asyncio.IncompleteReadError, BadResponse, ValueError):
            status = 0
            await submitter.close()
        finished = clock()
        if started < measure_from or finished > until:
            continue  # warm-up, or finished after the window closed
        window.statuses[status] = window.statuses.get(status, 0) + 1
        if status == 202:
            window.latencies.append(finished - started)
        else:
            window.errors += 1


async def measure(
    port: int, token: str, clients: int, warmup: float, duration: float, server_pid: int, watch: DbWatch
) -> Window:
    run_id = f"c{clients}-{os.getpid()}-{time.time_ns()}"
    submitters = [Submitter(port, token, run_id) for _ in range(clients)]
    await asyncio.gather(*(s.connect() for s in submitters))
    window = Window(clients)
    measure_from = time.perf_counter() + warmup
    until = measure_from + duration
    loops = [asyncio.create_task(client_loop(s, window, measure_from, until)) for s in submitters]
    await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
    started = time.perf_counter()
    before, sessions_before = cpu_snapshot(server_pid), await watch.sessions()
    stop = asyncio.Event()
    sampler = asyncio.create_task(watch.peak_open(stop))
    _, stuck = await asyncio.wait(loops, timeout=duration + REQUEST_TIMEOUT)
    for loop in stuck:  # a request the server never answered: an error, and stop waiting for it
        loop.cancel()
        window.errors += 1
        window.statuses[0] = window.statuses.get(0, 0) + 1
    stop.set()
    window.db_connections_peak = await sampler
    after, sessions_after = cpu_snapshot(server_pid), await watch.sessions()
    window.cpu_wall = time.perf_counter() - started  # in-flight requests finish after the window
    window.db_connections = sessions_after - sessions_before
    window.seconds = duration
    window.cpu = {key: after[key] - before[key] for key in before}
    await asyncio.gather(*(s.close() for s in submitters))
    return window


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
    watch = await DbWatch.open()
    try:
        for clients in CONCURRENCY_LEVELS:
            window = await measure(port, token, clients, args.warmup, args.duration, server_pid, watch)
            log(describe(window))
            if window.errors:
                log(f"   non-202 answers: {window.statuses}")
            windows.append(window)
    finally:
        await watch.close()
    return windows


def install_uvloop() -> str:
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


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


def server_log_summary(path: Path) -> tuple[int, str]:
    """How many ERROR records the server logged, and the first exception line among them."""
    text = path.read_text(errors="replace") if path.exists() else ""
    errors = sum(1 for line in text.splitlines() if " ERROR " in line)
    first = next((m.group(0) for m in EXCEPTION_LINE.finditer(text)), "")
    return errors, first


def run(args: argparse.Namespace, var_dir: Path, loop_name: str) -> tuple[list[Window], dict]:
    env = server_env(var_dir, args.conn_max_age, args.pool_size)
    server_log = var_dir / "server.log"
    log(f"Creating database {DB_NAME}, migrating and seeding ...")
    benchdb.recreate(DB_NAME)
    server = None
    try:
        token = migrate_and_seed(env)
        purge_redis()
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
            "celery_messages": purge_redis(),
            "server_log_errors": errors,
        }
    finally:
        if server is not None:
            stop_server(server)
        benchdb.drop(DB_NAME)
        purge_redis()


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
