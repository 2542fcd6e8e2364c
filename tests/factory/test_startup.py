"""A server that cannot work stops at start with one line saying why (exit status 2), not a
traceback: gunicorn, uvicorn and manage.py, each a real process under production settings."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

ROOT = Path(__file__).resolve().parents[2]
GOOD_KEY = "start-test-key-not-a-secret-0123456789abcdefghijklmnopqrstuvwxyz"


def database_url() -> str:
    db = settings.DATABASES["default"]
    return f"postgresql://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


def production_env(tmp_path: Path, **changes: str | None) -> dict[str, str]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "factory.settings",
        "SECRET_KEY": GOOD_KEY,
        "DATABASE_URL": database_url(),
        "FACTORY_VAR_DIR": str(tmp_path),
        "ALLOWED_HOSTS": "factory.example.org",
    }
    env.pop("DEBUG", None)
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def gunicorn(port: int) -> list[str]:
    return [sys.executable, "-m", "gunicorn", "-c", "deploy/gunicorn.conf.py", f"--bind=127.0.0.1:{port}"]


def uvicorn(port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "factory.asgi:application",
        "--port",
        str(port),
        "--lifespan=off",
    ]


def start(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def assert_one_line(result: subprocess.CompletedProcess, expected: str) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("factory: cannot start: ") and expected in last, result.stderr
    return last


SERVERS = {"gunicorn": gunicorn, "uvicorn": uvicorn}


@pytest.mark.parametrize("server", SERVERS)
def test_a_missing_secret_key_stops_the_server(server, tmp_path):
    port = free_port()
    result = start(SERVERS[server](port), production_env(tmp_path, SECRET_KEY=None))
    assert_one_line(result, "SECRET_KEY must be set when DEBUG is off")


@pytest.mark.parametrize("server", SERVERS)
def test_a_weak_secret_key_stops_the_server(server, tmp_path):
    result = start(SERVERS[server](free_port()), production_env(tmp_path, SECRET_KEY="changeme"))
    assert_one_line(result, "SECRET_KEY is too weak: it has 8 characters")
    result = start(SERVERS[server](free_port()), production_env(tmp_path, SECRET_KEY="ab" * 40))
    assert_one_line(result, "fewer than 5 different characters")


@pytest.mark.parametrize("server", SERVERS)
def test_debug_for_a_public_host_stops_the_server(server, tmp_path):
    env = production_env(tmp_path, DEBUG="1", ALLOWED_HOSTS="localhost,factory.example.org")
    result = start(SERVERS[server](free_port()), env)
    assert_one_line(result, "DEBUG is on while ALLOWED_HOSTS names public hosts (factory.example.org)")


def celery(command: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "factory", command]


PROCESSES = {
    **SERVERS,
    "celery worker": lambda port: celery("worker"),
    "celery beat": lambda port: celery("beat"),
}


@pytest.mark.parametrize("process", PROCESSES)
def test_an_unreachable_database_stops_the_process_and_its_password_stays_secret(process, tmp_path):
    with socket.socket() as closed:  # a port bound and never listened on: connections are refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        url = f"postgresql://factory:db-password-9f3@127.0.0.1:{port}/factory"
        result = start(PROCESSES[process](free_port()), production_env(tmp_path, DATABASE_URL=url))
    line = assert_one_line(result, f"cannot reach the postgresql database factory at 127.0.0.1:{port}")
    assert "db-password-9f3" not in result.stderr + result.stdout
    assert line


def test_manage_py_says_what_is_wrong_in_one_line(tmp_path):
    result = start([sys.executable, "manage.py", "check"], production_env(tmp_path, SECRET_KEY="short"))
    assert_one_line(result, "SECRET_KEY is too weak")


@pytest.mark.django_db  # the test database exists
def test_a_good_configuration_starts_and_serves(tmp_path):
    """The control: the same command with nothing wrong serves /healthz."""
    import time
    import urllib.request

    port = free_port()
    env = production_env(tmp_path, ALLOWED_HOSTS="127.0.0.1")
    with subprocess.Popen(gunicorn(port), cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True) as process:
        try:
            deadline = time.monotonic() + 30
            while True:
                assert process.poll() is None, process.stderr.read()
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                        assert response.status == 200
                        break
                except OSError:
                    assert time.monotonic() < deadline, "gunicorn did not answer"
                    time.sleep(0.2)
        finally:
            process.terminate()
            process.wait(timeout=30)


@pytest.mark.parametrize("command", ["worker", "beat"])
def test_a_celery_process_with_a_bad_setting_stops_with_one_line(command, tmp_path):
    result = start(celery(command), production_env(tmp_path, SECRET_KEY=None))
    assert_one_line(result, "SECRET_KEY must be set when DEBUG is off")
    env = production_env(tmp_path, DEBUG="1", ALLOWED_HOSTS="factory.example.org")
    assert_one_line(start(celery(command), env), "DEBUG is on while ALLOWED_HOSTS names public hosts")
