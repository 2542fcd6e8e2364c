"""The API through the real ASGI server (uvicorn, the web process's own application): requests
reach Django's synchronous views through factory.wsgi_bridge and come back whole or streamed."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

import pytest
from django.conf import settings
from django.contrib.auth.models import Group

from billing import focus
from factory.choices import FINANCE_GROUP
from factory.models import ApiToken
from jobs.models import Job

pytestmark = pytest.mark.django_db(transaction=True)


def call(url: str, token: str, *, data: dict | None = None, headers: dict | None = None):
    body = json.dumps(data).encode() if data is not None else None
    request = urllib.request.Request(url, data=body, method="POST" if body else "GET")
    request.add_header("Authorization", f"Token {token}")
    if body:
        request.add_header("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def test_submitting_through_the_server_creates_one_job_per_key(asgi_server, owner, cluster, tenant):
    token = ApiToken.issue(owner)[1]
    spec = {
        "tenant": tenant.slug,
        "name": "train",
        "command": "echo hi",
        "gpu_type": "h100",
        "gpu_count": 1,
        "time_limit_minutes": 10,
    }
    url = f"{asgi_server}/api/v1/jobs/"
    status, headers, body = call(url, token, data=spec, headers={"Idempotency-Key": "k-1"})
    assert status == 202, body
    job = json.loads(body)
    assert headers["Location"] == f"/jobs/{job['id']}/"
    status, headers, body = call(url, token, data=spec, headers={"Idempotency-Key": "k-1"})
    assert (status, headers.get("Idempotent-Replayed"), json.loads(body)["id"]) == (202, "true", job["id"])
    assert Job.objects.count() == 1

    status, _, body = call(url, token, data={**spec, "gpu_count": 0, "name": "a b", "command": ""})
    assert status == 400
    assert set(json.loads(body)) == {"gpu_count", "name", "command"}
    status, _, _ = call(url, token, data={**spec, "tenant": "someone-else"})
    assert status == 404
    assert Job.objects.count() == 1

    status, _, body = call(f"{url}?state=pending", token)
    assert status == 200 and [j["id"] for j in json.loads(body)["results"]] == [job["id"]]


def test_a_streamed_export_comes_through_the_server(asgi_server, django_user_model):
    finance = django_user_model.objects.create_user("finance")
    finance.groups.add(Group.objects.get_or_create(name=FINANCE_GROUP)[0])  # flushed with the test data
    token = ApiToken.issue(finance)[1]
    status, headers, body = call(
        f"{asgi_server}/api/v1/reports/chargeback/?month=2026-11&format=focus", token
    )
    assert status == 200
    assert headers["Content-Disposition"] == 'attachment; filename="focus-2026-11.csv"'
    assert headers.get("Transfer-Encoding") == "chunked"
    assert body.decode().splitlines()[0] == ",".join(focus.NAMES)


def exchange(base_url: str, head: str, body: bytes = b"", timeout: float = 10) -> tuple[int, bytes]:
    """Send a raw request (a body shorter than it declares, if asked) and read until the server
    closes the connection; returns the status and the whole answer."""
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(head.encode() + b"\r\n" + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return int(answer[9:12]), answer


def chunked(body: bytes, size: int = 8192) -> bytes:
    parts = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts) + b"0\r\n\r\n"


def test_a_large_body_without_credentials_is_refused_before_it_is_sent(asgi_server, owner):
    # 10 MiB announced, nothing sent: the answer comes at once, and the connection closes.
    head = (
        "POST /api/v1/auth/token/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {10 * 1024 * 1024}\r\n"
    )
    status, answer = exchange(asgi_server, head)
    assert status == 413 and b"connection: close" in answer.lower()
    # So too on the live stream's path, which Django's ASGI handler serves.
    stream = f"GET /jobs/1/stream/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {10 * 1024 * 1024}\r\n"
    assert exchange(asgi_server, stream)[0] == 413

    # Without a length, only as much as an anonymous request may send is read.
    head = (
        "POST /api/v1/auth/token/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n"
    )
    big = json.dumps(
        {"username": "researcher", "password": "x" * (settings.FACTORY_ANONYMOUS_MAX_BODY_BYTES)}
    )
    assert exchange(asgi_server, head, chunked(big.encode()))[0] == 413
    # A small chunked sign-in reaches Django whole.
    small = json.dumps({"username": "researcher", "password": "pw-researcher"}).encode()
    status, answer = exchange(asgi_server, head + "Connection: close\r\n", chunked(small, size=10))
    assert status == 200 and b'"token"' in answer


def test_a_signed_in_client_may_send_a_larger_body_and_no_more(asgi_server, owner, cluster, tenant, quotas):
    token = ApiToken.issue(owner)[1]
    command = "é" * 30_000  # 60 KB of UTF-8, 180 KB as JSON escapes
    spec = {
        "tenant": tenant.slug,
        "name": "big",
        "command": command,
        "gpu_type": "h100",
        "gpu_count": 1,
        "time_limit_minutes": 10,
    }
    status, _, body = call(f"{asgi_server}/api/v1/jobs/", token, data=spec)
    assert status == 202, body
    assert Job.objects.get().command == command

    # The same body with a token that is no good, or none, is refused.
    status, _, _ = call(f"{asgi_server}/api/v1/jobs/", "0" * 64, data=spec)
    assert status == 413
    head = "POST /api/v1/jobs/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    head += f"Content-Length: {len(json.dumps(spec))}\r\n"
    assert exchange(asgi_server, head)[0] == 413  # without credentials, before the body is sent

    # Past the signed-in limit, refused before it is sent, token or not.
    head = (
        "POST /api/v1/jobs/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Authorization: Token {token}\r\nContent-Length: {settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1}\r\n"
    )
    assert exchange(asgi_server, head)[0] == 413
    assert Job.objects.count() == 1
