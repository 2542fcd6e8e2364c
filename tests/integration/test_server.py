"""The API through the real ASGI server (uvicorn, the web process's own application): requests
reach Django's synchronous views through factory.wsgi_bridge and come back whole or streamed."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from django.contrib.auth.models import Group

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
    assert body.decode().startswith("BillingPeriodStart,")
