"""Real moving parts for end-to-end tests: a Celery worker process (with its scheduler) on Redis
and the test database, the production web tier (nginx, gunicorn, uvicorn) as processes, and the
ASGI app under uvicorn in a thread of the test process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis
from django.conf import settings

PROJECT_DIR = Path(__file__).resolve().parents[2]
# The portal's worker account on the Slurm of scripts/slurm-dev-cluster, and its group.
PORTAL_USER, PORTAL_GROUP = "aif-portal", "aifactory-portal"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
]


@pytest.fixture
def slurm_tools_as_the_portal(monkeypatch):
    """The tests run as root, which a portal worker never is: the Slurm adapter's tools run as
    aif-portal (in group aifactory-portal only), so that what the portal may do is what that
    account's sudo rule and Slurm admin level allow."""
    from types import SimpleNamespace

    from factory.adapters.slurm import cli

    run = subprocess.run

    def run_as_portal(*args, **kwargs):
        return run(*args, user=PORTAL_USER, group=PORTAL_GROUP, extra_groups=[], **kwargs)

    shim = SimpleNamespace(
        run=run_as_portal,
        TimeoutExpired=subprocess.TimeoutExpired,
        CompletedProcess=subprocess.CompletedProcess,
    )
    monkeypatch.setattr(cli, "subprocess", shim)


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "args": CHROMIUM_ARGS}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WorkerProcess:
    """`celery worker` (with its scheduler, `-B`, unless told otherwise) in its own process group,
    so a test can kill it like a crash would. It serves every queue unless given some."""

    def __init__(
        self,
        tmp_path: Path,
        name: str = "worker",
        *,
        queues: list[str] | None = None,
        beat: bool = True,
        concurrency: int = 2,
        env: dict[str, str] | None = None,
    ) -> None:
        self.tmp_path = tmp_path
        self.name = name
        self.queues = queues or settings.FACTORY_QUEUES
        self.beat = beat
        self.concurrency = concurrency
        self.extra_env = env or {}
        self.proc: subprocess.Popen | None = None
        self.log_path = tmp_path / f"{name}.log"

    def env(self) -> dict[str, str]:
        db = settings.DATABASES["default"]
        url = f"postgresql://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
        return {
            **os.environ,
            "DATABASE_URL": url,  # the test database pytest-django created
            "FACTORY_ALLOW_LOCAL_BACKEND": "1",
            "FACTORY_LOCAL_BACKEND_ROOT": str(settings.FACTORY_LOCAL_BACKEND_ROOT),
            "FACTORY_LOCAL_WORK_ROOT": str(settings.FACTORY_LOCAL_WORK_ROOT),
            # The Slurm jobs' directories (scripts, logs): where the test process reads them too.
            "FACTORY_SLURM_JOB_ROOT": str(settings.FACTORY_SLURM_JOB_ROOT),
            "FACTORY_SYNC_INTERVAL": "0.5",
            "FACTORY_DISPATCH_STALE_AFTER": "2",
            # A scheduler started again after a kill waits this long for the dead one's lock.
            "FACTORY_BEAT_TICK": "1",
            "FACTORY_BEAT_LOCK_TIMEOUT": "3",
            **self.extra_env,
        }

    def command(self) -> list[str]:
        command = [sys.executable, "-m", "celery", "-A", "factory", "worker", "-n", f"{self.name}@%h"]
        command += ["-Q", ",".join(self.queues), f"--concurrency={self.concurrency}"]
        if self.beat:
            command += ["-B", "-s", str(self.tmp_path / "beat-schedule")]
        return [*command, "--without-gossip", "--without-mingle", "--loglevel=INFO"]

    def start(self) -> None:
        log = open(self.log_path, "a")  # noqa: SIM115 - kept open for the process's lifetime
        self.proc = subprocess.Popen(
            self.command(),
            cwd=PROJECT_DIR,
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill(self) -> None:
        """SIGKILL the worker, its pool and its scheduler at once: no shutdown, no acks."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""


@pytest.fixture
def celery_worker_process(transactional_db, tmp_path):
    redis.Redis.from_url(settings.CELERY_BROKER_URL).flushdb()  # nothing left over from other tests
    worker = WorkerProcess(tmp_path)
    worker.start()
    yield worker
    worker.stop()


@pytest.fixture
def web_tier(transactional_db, tmp_path):
    """The production web tier as real processes on the test database: nginx in front
    (deploy/nginx/), gunicorn for pages and the API, uvicorn for the event streams. Its URL is the
    proxy's."""
    from bench.support.topology import WebTier

    env = {**WorkerProcess(tmp_path).env(), "ALLOWED_HOSTS": "127.0.0.1,localhost"}
    tier = WebTier(env, tmp_path, workers=1)
    try:
        tier.start()
        yield tier
    finally:
        tier.stop()


@pytest.fixture
def web_server(web_tier):
    return web_tier.url


@pytest.fixture
def asgi_server(transactional_db):
    """The ASGI application under uvicorn in a thread of the test process, for tests that look
    inside the server (its threads, its connection pool)."""
    import uvicorn

    from factory.asgi import application

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            application,
            host="127.0.0.1",
            port=port,
            lifespan="off",
            log_level="warning",
            timeout_graceful_shutdown=1,
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def wait_until(predicate, timeout: float, message: str = "condition", interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    if callable(message):
        message = message()
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


@pytest.fixture
def browser_oidc_provider(asgi_server, tmp_path, settings):
    """The site's identity provider, with the portal under uvicorn as its client."""
    from tests.conftest import use_provider
    from tests.oidc.server import OidcProvider

    provider = OidcProvider(tmp_path, portal_url=asgi_server)
    provider.start()
    use_provider(settings, provider)
    yield provider
    provider.stop()
