"""A Prometheus of its own for development, tests and benchmarks: Debian's `prometheus` binary
(scripts/test-services installs it) scraping the GPU exporter simulator, one target per simulated
node, as a site's Prometheus scrapes dcgm-exporter on every node.

Each target is the simulator's /nodes/<name>/metrics, with `instance` set to the node's name and
the given labels added; `LocalPrometheus` runs it on its own port and storage directory.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import requests


def scrape_config(
    exporter: str,
    nodes: list[str],
    *,
    labels: dict[str, str] | None = None,
    interval: float = 10.0,
    job: str = "gpu-exporter",
) -> dict:
    """A scrape job for the simulator at `exporter` (host:port) serving `nodes`."""
    targets = [
        {
            "targets": [exporter],
            "labels": {"__metrics_path__": f"/nodes/{name}/metrics", "instance": name, **(labels or {})},
        }
        for name in nodes
    ]
    return {
        "job_name": job,
        "scrape_interval": f"{int(interval * 1000)}ms",
        "scrape_timeout": f"{int(interval * 1000)}ms",
        "static_configs": targets,
    }


def config_text(*scrape_jobs: dict) -> str:
    """prometheus.yml (JSON is YAML)."""
    return json.dumps(
        {"global": {"evaluation_interval": "1m"}, "scrape_configs": list(scrape_jobs)}, indent=1
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalPrometheus:
    """`prometheus` on 127.0.0.1:<port>, its data in a temporary directory removed on stop."""

    def __init__(
        self,
        config: str,
        *,
        port: int | None = None,
        binary: str = "prometheus",
        web_config: Path | None = None,
    ) -> None:
        path = shutil.which(binary)
        if path is None:
            raise RuntimeError("no prometheus binary: run scripts/test-services (apt-get install prometheus)")
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dir = Path(tempfile.mkdtemp(prefix="factory-prometheus-"))
        (self.dir / "prometheus.yml").write_text(config)
        self.log = open(self.dir / "prometheus.log", "w")  # noqa: SIM115 (open while it runs)
        self.process = subprocess.Popen(
            [
                path,
                f"--config.file={self.dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1d",
                "--log.level=warn",
                *([f"--web.config.file={web_config}"] if web_config else []),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def query(self, expr: str) -> list[dict]:
        answer = requests.post(f"{self.url}/api/v1/query", data={"query": expr}, timeout=10)
        answer.raise_for_status()
        return answer.json()["data"]["result"]

    def wait_for(self, expr: str, *, timeout: float = 60.0) -> list[dict]:
        """The first non-empty answer to `expr` (Prometheus sends its first targets to scraping
        some five seconds after it starts)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited: {(self.dir / 'prometheus.log').read_text()[-2000:]}")
            try:
                found = self.query(expr)
                if found:
                    return found
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"prometheus gave nothing for {expr} within {timeout:g} s")
            time.sleep(0.1)

    def wait_ready(self, *, timeout: float = 30.0, **request) -> None:
        """Until its API answers (at once, unlike its first scrape)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited: {(self.dir / 'prometheus.log').read_text()[-2000:]}")
            try:
                if requests.get(f"{self.url}/-/ready", timeout=2, **request).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"prometheus not ready within {timeout:g} s")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
