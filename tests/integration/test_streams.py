"""Open job pages against the real server (factory.asgi under uvicorn): many open event streams
hold no thread and no pooled database connection, so the API still answers, and an event reaches
every page at once."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from django.conf import settings
from django.db import connection
from django.test import Client

from factory.models import ApiToken
from jobs.choices import EventKind

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "postgresql", reason="the pool and NOTIFY are PostgreSQL's"),
]

# More open pages than the pool has connections and the server has threads.
STREAMS = 3 * settings.DATABASES["default"].get("OPTIONS", {}).get("pool", {}).get("max_size", 8)


def request(base_url: str, path: str, header: str) -> socket.socket:
    host, port = base_url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{header}\r\n\r\n".encode())
    return sock


class Stream:
    def __init__(self, base_url: str, job_id: int, session: str) -> None:
        self.sock = request(base_url, f"/jobs/{job_id}/stream/", f"Cookie: sessionid={session}")
        self.received = b""

    def read_until(self, text: bytes, timeout: float) -> float:
        started = time.monotonic()
        self.sock.settimeout(timeout)
        while text not in self.received:
            chunk = self.sock.recv(65536)
            assert chunk, f"the stream closed before {text!r}"
            self.received += chunk
        return time.monotonic() - started


def api_get(base_url: str, token: str) -> tuple[int, float]:
    started = time.monotonic()
    with request(base_url, "/api/v1/jobs/", f"Authorization: Token {token}") as sock:
        status = int(sock.recv(65536)[9:12])
    return status, time.monotonic() - started


def checked_out() -> int:
    """Connections of this process's pool (the server's: it runs in this process) in use now."""
    stats = connection.pool.get_stats()
    return stats["pool_size"] - stats["pool_available"]


def test_open_streams_hold_no_thread_and_no_connection_between_events(asgi_server, owner, make_job):
    jobs = [make_job(name=f"watched-{i}") for i in range(4)]
    client = Client()
    client.force_login(owner)
    session = client.cookies["sessionid"].value
    token = ApiToken.issue(owner)[1]
    connection.close()  # this test's own connection back to the pool: only the server's count

    first = Stream(asgi_server, jobs[0].pk, session)  # the server's shared threads, started once
    first.read_until(b"event: status", timeout=10)
    assert api_get(asgi_server, token)[0] == 200
    threads = threading.active_count()

    streams = [Stream(asgi_server, jobs[i % len(jobs)].pk, session) for i in range(STREAMS)]
    for stream in streams:
        stream.read_until(b"event: status", timeout=20)
    assert threading.active_count() <= threads + 1  # the streams' second shared thread, at most
    in_use = []
    for _ in range(10):
        time.sleep(0.05)
        in_use.append(checked_out())
    assert max(in_use) <= 1  # a brief read in flight (the refresh), not a connection per page
    status, seconds = api_get(asgi_server, token)
    assert status == 200 and seconds < 2

    jobs[1].record(EventKind.INFO, "checkpoint saved")
    connection.close()
    watching = streams[1 :: len(jobs)]  # the streams of jobs[1]
    for stream in watching:
        assert stream.read_until(b"checkpoint saved", timeout=2) < 2
    assert all(b"checkpoint saved" not in s.received for s in streams if s not in watching)
    for stream in [first, *streams]:
        stream.sock.close()
