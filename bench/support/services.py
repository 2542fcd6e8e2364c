"""The processes a benchmark runs the portal with, each started as production starts it and in a
session of its own, so that it can be stopped with everything it started, or killed the way a crash
would kill it: the web server, Celery workers and beat, a private Redis, and the local Slurm
controller of scripts/slurm-dev-cluster."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=0.5).close()
        return True
    except OSError:
        return False


class Service:
    """One process (and whatever it forks) of the stack, restartable with the same command."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.command = command
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def start(self) -> Service:
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                self.command,
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the process and its group at once: no shutdown, no acknowledgements."""
        self.signal_group(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=30)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        if not self.alive:
            return
        self.signal_group(sig)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def signal_group(self, sig: int) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)  # its own session: only what this service started

    def wait_for_port(self, port: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive:
                raise RuntimeError(f"{self.name} exited: {self.tail()}")
            if port_open(port):
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not listen on {port} within {timeout:g} s")

    def tail(self, size: int = 2000) -> str:
        return self.log_path.read_text(errors="replace")[-size:] if self.log_path.exists() else ""


def web_server(env: dict[str, str], port: int, workers: int, log_path: Path) -> Service:
    """gunicorn with deploy/gunicorn.conf.py: pages and the API (the whole web tier, with the proxy
    and the event streams, is topology.WebTier)."""
    command = [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "deploy" / "gunicorn.conf.py")]
    command += [f"--bind={HOST}:{port}", f"--workers={workers}"]
    return Service("web server", command, env, log_path)


def celery_worker(
    name: str,
    env: dict[str, str],
    log_path: Path,
    concurrency: int,
    loglevel: str = "WARNING",
    queues: list[str] | None = None,
) -> Service:
    """A worker of the given queues (default: every queue of the portal)."""
    from factory.queues import QUEUES

    command = [sys.executable, "-m", "celery", "-A", "factory", "worker", "-n", f"{name}@%h"]
    command += ["-Q", ",".join(queues or QUEUES)]
    command += [f"--concurrency={concurrency}", "--without-gossip", "--without-mingle"]
    return Service(f"worker {name}", [*command, f"--loglevel={loglevel}"], env, log_path)


def celery_beat(env: dict[str, str], schedule: Path, log_path: Path, loglevel: str = "WARNING") -> Service:
    command = [sys.executable, "-m", "celery", "-A", "factory", "beat", "-s", str(schedule)]
    return Service("beat", [*command, f"--loglevel={loglevel}"], env, log_path)


def redis_server(port: int, log_path: Path) -> Service:
    """A private Redis without persistence: what it holds is gone when it is killed."""
    command = ["redis-server", "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"]
    return Service("redis", command, {"PATH": os.environ.get("PATH", "")}, log_path)


# --- the local Slurm controller -----------------------------------------------------------------

SLURMCTLD = "/usr/sbin/slurmctld"
SLURMCTLD_PID_FILE = Path("/run/slurmctld.pid")


def slurmctld_pid() -> int | None:
    """The running slurmctld of scripts/slurm-dev-cluster, by its pid file (checked to be one)."""
    try:
        pid = int(SLURMCTLD_PID_FILE.read_text().strip())
        exe = os.readlink(f"/proc/{pid}/exe")
    except (OSError, ValueError):
        return None
    return pid if os.path.realpath(exe) == os.path.realpath(SLURMCTLD) else None


def slurmctld_up() -> bool:
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, check=False)
    return "UP" in ping.stdout


def stop_slurmctld(sig: int = signal.SIGTERM, timeout: float = 30.0) -> bool:
    """Stop the controller (its jobs keep running under their slurmd); False if none ran. SIGTERM
    saves its state first; a SIGKILL loses what it did since its last save."""
    pid = slurmctld_pid()
    if pid is None:
        return False
    os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.05)
    return True


def start_slurmctld(timeout: float = 60.0) -> None:
    """Start the controller as scripts/slurm-dev-cluster does (it daemonizes; none of our output
    descriptors may reach it), and wait until it answers; the script itself if that fails."""
    if slurmctld_pid() is None:
        subprocess.run(
            [SLURMCTLD],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            check=False,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if slurmctld_up():
            return
        time.sleep(0.2)
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "slurm-dev-cluster"), "start"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
    )
