"""factory.serve, the web server: its parent accepts connections and hands them to the uvicorn
workers in turn, so clients that connect at once are spread evenly; a dead worker is replaced."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings

from factory.models import ApiToken

from .conftest import PROJECT_DIR, free_port, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def server(transactional_db, tmp_path):
    db = settings.DATABASES["default"]
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": f"postgresql://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
    }
    command = [sys.executable, "-m", "factory.serve", f"--port={port}", "--workers=2"]
    command.append("--timeout-graceful-shutdown=2")
    with (tmp_path / "serve.log").open("ab") as log:
        process = subprocess.Popen(command, cwd=PROJECT_DIR, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: len(workers(process.pid)) == 2 and listening(port), 30, "the server to start")
        yield process, port
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def workers(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in children.read_text().split()] if children.exists() else []


def connections_held(worker: int, port: int) -> int:
    """Established TCP connections to `port` among the worker's open files (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{worker}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    held = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].split(":")[1], 16)
        if local_port == port and fields[3] == "01" and fields[9] in inodes:
            held += 1
    return held


def get(sock: socket.socket, token: str) -> bytes:
    request = f"GET /api/v1/tenants/ HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Token {token}\r\n\r\n"
    sock.sendall(request.encode())
    return sock.recv(65536).split(b"\r\n", 1)[0]


def test_clients_connecting_at_once_are_spread_over_the_workers(server, owner):
    process, port = server
    token = ApiToken.issue(owner)[1]
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(8)]
    try:
        assert {get(c, token) for c in clients} == {b"HTTP/1.1 200 OK"}
        assert sorted(connections_held(w, port) for w in workers(process.pid)) == [4, 4]
    finally:
        for client in clients:
            client.close()


def test_a_dead_worker_is_replaced_and_stop_is_graceful(server, owner):
    process, port = server
    token = ApiToken.issue(owner)[1]
    first, second = workers(process.pid)
    os.kill(first, signal.SIGKILL)
    wait_until(
        lambda: first not in workers(process.pid) and len(workers(process.pid)) == 2, 30, "a new worker"
    )
    assert second in workers(process.pid)  # the other one was left alone
    wait_until(lambda: listening(port), 10, "the server")
    for _ in range(4):  # every worker answers, the new one included
        with socket.create_connection(("127.0.0.1", port)) as client:
            assert get(client, token) == b"HTTP/1.1 200 OK"
    process.send_signal(signal.SIGTERM)
    started = time.monotonic()
    assert process.wait(timeout=15) == 0
    assert time.monotonic() - started < 10
    assert not listening(port)
