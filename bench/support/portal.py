"""The portal as the benchmarks drive it: a throwaway database, the portal's own former server
(`python -m factory.serve`, for comparison; the production web tier is in topology.py), and a
small HTTP/1.1 keep-alive client that submits jobs through the API and measures what came
back."""

from __future__ import annotations

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
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import redis

from . import benchdb, procstat

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
REQUEST_TIMEOUT = 30.0  # seconds past the window an unanswered request may take
EXCEPTION_LINE = re.compile(r"^[\w.]+(?:Error|Exception): .+$", re.MULTILINE)

# Tenant, GPU types, a local cluster with pools, a member user and its API token (printed).
SEED = """
from django.contrib.auth import get_user_model
from factory.choices import ClusterKind, Role
from factory.models import ApiToken, Cluster, GpuType, Membership, Pool, Tenant

tenant = Tenant.objects.create(slug="TENANT_SLUG", name="Bench Lab")
h100 = GpuType.objects.create(slug="h100", name="NVIDIA H100 80GB", memory_gb=80, board_power_watts=700)
a100 = GpuType.objects.create(slug="a100", name="NVIDIA A100 80GB", memory_gb=80, board_power_watts=400)
cluster = Cluster.objects.create(slug="local", name="Bench machine", kind=ClusterKind.LOCAL)
Pool.objects.create(cluster=cluster, gpu_type=h100, capacity=8)
Pool.objects.create(cluster=cluster, gpu_type=a100, capacity=8)
user = get_user_model().objects.create_user("bench")
Membership.objects.create(user=user, tenant=tenant, role=Role.MEMBER)
print("TOKEN=" + ApiToken.issue(user, name="bench")[1])
"""


def log(message: str) -> None:
    print(message, flush=True)


# --- environment, database, seed ----------------------------------------------------------------


def server_env(database_url: str, redis_url: str, var_dir: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        SECRET_KEY="bench-only-not-a-secret-" + "x" * 40,
        DEBUG="0",
        SECURE_SSL_REDIRECT="0",
        ALLOWED_HOSTS=f"{HOST},localhost",
        FACTORY_VAR_DIR=str(var_dir),
        LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


def manage(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args[:1])} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def migrate_and_seed(env: dict[str, str], tenant: str, more: str = "") -> dict[str, str]:
    """Migrate, run SEED (and `more`, Python run after it in the same shell); returns what they
    printed as NAME=value lines."""
    manage(env, "migrate", "--noinput", "-v0")
    output = manage(env, "shell", "-v0", "-c", SEED.replace("TENANT_SLUG", tenant) + more)
    printed = dict(line.split("=", 1) for line in output.splitlines() if re.match(r"^[A-Z_]+=", line))
    if "TOKEN" not in printed:
        raise RuntimeError(f"The seed printed no token:\n{output}")
    return printed


def purge_redis(url: str) -> int:
    """Empty the bench's Redis DB; returns how many Celery messages were waiting in it."""
    client = redis.Redis.from_url(url)
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


def start_server(
    env: dict[str, str], port: int, workers: int, log_path: Path, module: str = "factory.serve"
) -> subprocess.Popen:
    """The portal's former server (`python -m <module>`: uvicorn workers, given connections
    round-robin by their parent), run from this checkout."""
    command = [
        sys.executable,
        "-m",
        module,
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


def server_log_summary(path: Path) -> tuple[int, str]:
    """How many ERROR records the server logged, and the first exception line among them."""
    text = path.read_text(errors="replace") if path.exists() else ""
    errors = sum(1 for line in text.splitlines() if " ERROR " in line)
    first = next((m.group(0) for m in EXCEPTION_LINE.finditer(text)), "")
    return errors, first


# --- CPU accounting (from /proc) ------------------------------------------------------------------


def cpu_snapshot(server_pids: list[int]) -> dict[str, float]:
    """CPU seconds used so far by the servers' process trees, PostgreSQL, Redis and this
    process."""
    table = procstat.processes()
    tree = set(server_pids)
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

    def __init__(self, conn: psycopg.AsyncConnection, name: str) -> None:
        self.conn = conn
        self.name = name

    @classmethod
    async def open(cls, name: str) -> DbWatch:
        return cls(await psycopg.AsyncConnection.connect(benchdb.url("postgres"), autocommit=True), name)

    async def close(self) -> None:
        await self.conn.close()

    async def scalar(self, sql: str) -> int:
        cursor = await self.conn.execute(sql, [self.name])
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

    def __init__(self, port: int, token: str, run_id: str, tenant: str) -> None:
        self.port = port
        self.run_id = run_id
        body = json.dumps(
            {
                "tenant": tenant,
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
    port: int,
    token: str,
    tenant: str,
    clients: int,
    warmup: float,
    duration: float,
    server_pids: list[int],
    watch: DbWatch,
) -> Window:
    """`clients` submitters post jobs for `warmup` + `duration` seconds; the window is the last
    `duration` seconds."""
    run_id = f"c{clients}-{os.getpid()}-{time.time_ns()}"
    submitters = [Submitter(port, token, run_id, tenant) for _ in range(clients)]
    await asyncio.gather(*(s.connect() for s in submitters))
    window = Window(clients)
    measure_from = time.perf_counter() + warmup
    until = measure_from + duration
    loops = [asyncio.create_task(client_loop(s, window, measure_from, until)) for s in submitters]
    await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
    started = time.perf_counter()
    before, sessions_before = cpu_snapshot(server_pids), await watch.sessions()
    stop = asyncio.Event()
    sampler = asyncio.create_task(watch.peak_open(stop))
    _, stuck = await asyncio.wait(loops, timeout=duration + REQUEST_TIMEOUT)
    for loop in stuck:  # a request the server never answered: an error, and stop waiting for it
        loop.cancel()
        window.errors += 1
        window.statuses[0] = window.statuses.get(0, 0) + 1
    stop.set()
    window.db_connections_peak = await sampler
    after, sessions_after = cpu_snapshot(server_pids), await watch.sessions()
    window.cpu_wall = time.perf_counter() - started  # in-flight requests finish after the window
    window.db_connections = sessions_after - sessions_before
    window.seconds = duration
    window.cpu = {key: after[key] - before[key] for key in before}
    await asyncio.gather(*(s.close() for s in submitters))
    return window


def install_uvloop() -> str:
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"
