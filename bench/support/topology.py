"""The production web tier on this machine: nginx in front (deploy/nginx/factory.conf.template),
gunicorn for pages and the API (deploy/gunicorn.conf.py), uvicorn for the live event streams
(factory.asgi), each a real process in a session of its own, as the benchmarks and the tests run
them. Only the addresses differ from a site's: everything listens on 127.0.0.1, on free ports.
"""

from __future__ import annotations

import os
import shutil
import string
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .services import HOST, ROOT, Service, free_port

TEMPLATE = ROOT / "deploy" / "nginx" / "factory.conf.template"
GUNICORN_CONF = ROOT / "deploy" / "gunicorn.conf.py"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def render_proxy_conf(
    listen: str, web: list[str], events: list[str], max_body: str, resolver: str = ""
) -> str:
    """The proxy's configuration from the one template, as envsubst would fill it in."""
    values = {
        "FACTORY_PROXY_LISTEN": listen,
        "FACTORY_WEB_SERVERS": " ".join(f"server {address};" for address in web),
        "FACTORY_EVENTS_SERVERS": " ".join(f"server {address};" for address in events),
        "FACTORY_MAX_BODY": max_body,
    }
    return string.Template(TEMPLATE.read_text()).safe_substitute(values)


def nginx_main_conf(directory: Path) -> str:
    """A main configuration around the template's for an nginx run by hand, its files in
    `directory`."""
    user = "user root root;" if os.geteuid() == 0 else ""  # its workers may write its temp files
    temp = "\n".join(
        f"    {kind}_temp_path {directory / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""{user}
worker_processes 1;
pid {directory / "nginx.pid"};
error_log {directory / "error.log"} warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
{temp}
    include {directory / "factory.conf"};
}}
"""


def gunicorn(env: dict[str, str], port: int, workers: int, log_path: Path) -> Service:
    command = [sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONF), f"--bind={HOST}:{port}"]
    command += [f"--workers={workers}"]
    return Service("gunicorn", command, env, log_path)


def uvicorn(env: dict[str, str], port: int, log_path: Path) -> Service:
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "factory.asgi:application",
        f"--host={HOST}",
        f"--port={port}",
    ]
    command += ["--lifespan=off", "--no-access-log", "--log-level=warning", "--timeout-graceful-shutdown=2"]
    command += ["--proxy-headers", f"--forwarded-allow-ips={HOST}", "--timeout-keep-alive=30"]
    return Service("uvicorn", command, env, log_path)


def nginx(directory: Path, log_path: Path) -> Service:
    command = [
        NGINX,
        "-p",
        str(directory),
        "-c",
        str(directory / "nginx.conf"),
        "-e",
        str(directory / "error.log"),
    ]
    return Service("nginx", [*command, "-g", "daemon off;"], {"PATH": os.environ.get("PATH", "")}, log_path)


@dataclass
class WebTier:
    """nginx → gunicorn (pages, API) and uvicorn (streams). `url` is the proxy's.

    The web servers are `workers` gunicorn instances of one worker process each, on ports of their
    own, which the proxy balances (least_conn), as it balances web containers or pods on a site.
    Worker processes sharing one listening socket race for the proxy's connections instead, and
    its few keep-alive connections may all land in one process, on one core."""

    env: dict[str, str]
    log_dir: Path
    workers: int = 2
    max_body: str = "1m"
    port: int = field(default_factory=free_port)
    events_port: int = field(default_factory=free_port)
    services: list[Service] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.web_ports = [free_port() for _ in range(self.workers)]

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self, timeout: float = 60.0) -> WebTier:
        self.nginx_dir = Path(tempfile.mkdtemp(prefix="factory-nginx-"))
        web = [f"{HOST}:{port}" for port in self.web_ports]
        conf = render_proxy_conf(f"{HOST}:{self.port}", web, [f"{HOST}:{self.events_port}"], self.max_body)
        (self.nginx_dir / "factory.conf").write_text(conf)
        (self.nginx_dir / "nginx.conf").write_text(nginx_main_conf(self.nginx_dir))
        self.events = uvicorn(self.env, self.events_port, self.log_dir / "uvicorn.log").start()
        self.web = [
            gunicorn(self.env, port, 1, self.log_dir / f"gunicorn-{i}.log").start()
            for i, port in enumerate(self.web_ports)
        ]
        self.proxy = nginx(self.nginx_dir, self.log_dir / "nginx.log").start()
        self.services = [self.events, *self.web, self.proxy]
        for service, port in zip(self.web, self.web_ports, strict=True):
            service.wait_for_port(port, timeout)
        self.events.wait_for_port(self.events_port, timeout)
        self.proxy.wait_for_port(self.port, timeout)
        return self

    def stop(self) -> None:
        for service in reversed(self.services):
            service.stop(timeout=15)
        if getattr(self, "nginx_dir", None):
            shutil.rmtree(self.nginx_dir, ignore_errors=True)

    def pids(self) -> list[int]:
        return [s.process.pid for s in self.services if s.process is not None]

    def __enter__(self) -> WebTier:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
