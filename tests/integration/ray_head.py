"""A real Ray head on 127.0.0.1 for tests and benchmarks, started and stopped by pid.

`ray start --head --block` runs as a child in its own session; SIGTERM to that pid takes all of
Ray's processes down in about 2 s (`ray stop` would kill every Ray process on the machine). GPUs
are logical: Ray schedules them and sets CUDA_VISIBLE_DEVICES, no device is needed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

RAY = Path(sys.executable).with_name("ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayHead:
    def __init__(
        self,
        *,
        num_gpus: int = 4,
        num_cpus: int = 8,
        resources: dict[str, float] | None = None,
        start_timeout_s: int = 60,
    ) -> None:
        self.num_gpus = num_gpus
        self.num_cpus = num_cpus  # logical: how many entrypoints fit, not cores
        self.resources = resources or {}
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen | None = None
        # Short: Ray's unix sockets live under it and their paths are limited to 107 bytes.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
        self.dashboard_port = free_port()
        self.address = f"http://127.0.0.1:{self.dashboard_port}"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "RAY_USAGE_STATS_ENABLED": "0",
            # Without it Ray 2.60 binds to the host's interface IP whatever --node-ip-address says.
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            # A job waiting for resources that never come fails after this, not after 15 minutes.
            "RAY_JOB_START_TIMEOUT_SECONDS": str(self.start_timeout_s),
        }

    def argv(self) -> list[str]:
        # Every fixed default port is replaced: GCS's default is Redis's 6379, and the client
        # server and agent would collide with another head on the machine.
        return [
            str(RAY),
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={free_port()}",
            f"--ray-client-server-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}",
            f"--num-cpus={self.num_cpus}",
            f"--num-gpus={self.num_gpus}",
            f"--resources={json.dumps(self.resources)}",
            f"--temp-dir={self.temp_dir}",
            "--disable-usage-stats",
        ]

    def start(self, timeout: float = 90.0) -> None:
        self.log_path = self.temp_dir / "head.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv(),
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.temp_dir,
            )
        try:
            self.wait_ready(timeout)
        except Exception:
            self.stop()
            raise

    def wait_ready(self, timeout: float) -> None:
        """Until the dashboard answers and the head has reported its resources."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.proc.returncode}:\n{self.log_tail()}")
            if "CPU" in self.resource_usage():
                return
            time.sleep(0.25)
        raise RuntimeError(f"the Ray head was not ready within {timeout:g} s:\n{self.log_tail()}")

    def resource_usage(self) -> dict:
        try:
            with urllib.request.urlopen(f"{self.address}/api/cluster_status", timeout=2) as response:
                body = json.load(response)
        except (OSError, ValueError):
            return {}
        status = (body.get("data") or {}).get("clusterStatus")
        report = status.get("loadMetricsReport") if isinstance(status, dict) else None
        return (report or {}).get("usage") or {}

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                # Only the session this head was started in: nobody else's Ray.
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._kill_stragglers()
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def _kill_stragglers(self) -> None:
        """Anything still alive in the head's session (its id is the head's pid)."""
        if self.proc is None:
            return
        for pid in session_members(self.proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def session_members(sid: int) -> list[int]:
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # Fields after the parenthesised command: state ppid pgrp session ...
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members
