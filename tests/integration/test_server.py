"""The API through the production web tier (nginx in front of gunicorn and uvicorn, as real
processes): requests come back whole or streamed, and bodies over the limits are refused, the
largest by the proxy before they are sent."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

import pytest
from django.conf import settings

from billing import focus
from factory import roles
from factory.choices import PlatformRole
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


def test_submitting_through_the_server_creates_one_job_per_key(web_server, owner, cluster, tenant):
    token = ApiToken.issue(owner)[1]
    spec = {
        "tenant": tenant.slug,
        "name": "train",
        "command": "echo hi",
        "gpu_type": "h100",
        "gpu_count": 1,
        "time_limit_minutes": 10,
    }
    url = f"{web_server}/api/v1/jobs/"
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


def test_a_streamed_export_comes_through_the_server(web_server, django_user_model):
    finance = django_user_model.objects.create_user("finance")
    roles.grant(finance, PlatformRole.FINANCE)
    token = ApiToken.issue(finance)[1]
    status, headers, body = call(f"{web_server}/api/v1/reports/chargeback/?month=2026-11&format=focus", token)
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


def refused_by_proxy(answer: bytes) -> bool:
    """nginx's own 413 page: the request never reached a server."""
    return b"413 Request Entity Too Large" in answer and b"Request body too large" not in answer


def test_a_body_over_the_limit_is_refused_by_the_proxy_before_it_is_sent(web_server, owner):
    # 10 MiB announced, nothing sent: the proxy answers at once, and closes the connection.
    head = (
        "POST /api/v1/auth/token/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {10 * 1024 * 1024}\r\n"
    )
    status, answer = exchange(web_server, head)
    assert status == 413 and refused_by_proxy(answer) and b"connection: close" in answer.lower()
    # So too on the live stream's path, where no body is expected at all.
    stream = f"GET /jobs/1/stream/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {64 * 1024}\r\n"
    status, answer = exchange(web_server, stream)
    assert status == 413 and refused_by_proxy(answer)
    # A chunked body is cut off once it passes the limit.
    head = (
        "POST /api/v1/auth/token/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\nConnection: close\r\n"
    )
    status, answer = exchange(web_server, head, chunked(b"x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1)))
    assert status == 413 and refused_by_proxy(answer)


def test_a_large_body_without_credentials_is_refused(web_server, owner):
    # Under the proxy's limit but over an anonymous client's: the server refuses it.
    head = (
        "POST /api/v1/auth/token/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\nConnection: close\r\n"
    )
    big = json.dumps(
        {"username": "researcher", "password": "x" * (settings.FACTORY_ANONYMOUS_MAX_BODY_BYTES)}
    )
    status, answer = exchange(web_server, head, chunked(big.encode()))
    assert status == 413 and b"before signing in" in answer
    # A small chunked sign-in reaches Django whole.
    small = json.dumps({"username": "researcher", "password": "pw-researcher"}).encode()
    status, answer = exchange(web_server, head, chunked(small, size=10))
    assert status == 200 and b'"token"' in answer


def test_a_signed_in_client_may_send_a_larger_body_and_no_more(web_server, owner, cluster, tenant, quotas):
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
    status, _, body = call(f"{web_server}/api/v1/jobs/", token, data=spec)
    assert status == 202, body
    assert Job.objects.get().command == command

    # The same body with a token that is no good, or none, is refused.
    status, _, _ = call(f"{web_server}/api/v1/jobs/", "0" * 64, data=spec)
    assert status == 413
    body = json.dumps(spec).encode()
    head = "POST /api/v1/jobs/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    head += f"Content-Length: {len(body)}\r\nConnection: close\r\n"
    assert exchange(web_server, head, body)[0] == 413

    # Past the signed-in limit, refused by the proxy before it is sent, token or not.
    head = (
        "POST /api/v1/jobs/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Authorization: Token {token}\r\nContent-Length: {settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1}\r\n"
    )
    status, answer = exchange(web_server, head)
    assert status == 413 and refused_by_proxy(answer)
    assert Job.objects.count() == 1


def test_the_client_address_behind_the_proxy_is_the_one_the_proxy_saw(web_server, owner):
    """A client cannot pick the address its failed sign-ins count against: the proxy replaces
    X-Forwarded-For, and the servers believe it only from the proxy."""
    from axes.models import AccessAttempt

    head = (
        "POST /api/v1/auth/token/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        "X-Forwarded-For: 203.0.113.9\r\nConnection: close\r\n"
    )
    body = json.dumps({"username": "researcher", "password": "wrong"}).encode()
    status, _ = exchange(web_server, head + f"Content-Length: {len(body)}\r\n", body)
    assert status == 400
    assert list(AccessAttempt.objects.values_list("ip_address", flat=True)) == ["127.0.0.1"]


def test_slow_clients_hold_no_server_thread(web_tier, owner):
    """More clients trickling a request than the web server has threads (one process of two
    threads here): the proxy holds them all, and the server still answers everyone else."""
    token = ApiToken.issue(owner)[1]
    slow = []
    try:
        for _ in range(6):
            sock = socket.create_connection(("127.0.0.1", web_tier.port), timeout=10)
            sock.sendall(
                b"POST /api/v1/jobs/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Authorization: Token " + token.encode() + b"\r\nContent-Length: 1000\r\n\r\n{"
            )  # 1 byte of 1,000, and then nothing
            slow.append(sock)
        for _ in range(3):
            status, _, body = call(f"{web_tier.url}/api/v1/tenants/", token)
            assert status == 200, body
        # The same requests sent straight to gunicorn take its two threads, and the next waits.
        direct = [
            socket.create_connection(("127.0.0.1", web_tier.web_ports[0]), timeout=10) for _ in range(2)
        ]
        slow += direct
        for sock in direct:
            sock.sendall(
                b"POST /api/v1/jobs/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Authorization: Token " + token.encode() + b"\r\nContent-Length: 1000\r\n\r\n{"
            )
        waiting = socket.create_connection(("127.0.0.1", web_tier.web_ports[0]), timeout=3)
        slow.append(waiting)
        waiting.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        with pytest.raises(TimeoutError):
            waiting.recv(100)
    finally:
        for sock in slow:
            sock.close()
