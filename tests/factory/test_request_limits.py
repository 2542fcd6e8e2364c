"""Request bodies: a client that is not signed in may send a small one, a signed-in one up to
DATA_UPLOAD_MAX_MEMORY_SIZE; anything larger is refused with 413 before the body is read (through
Django's test client here; through the real server in tests/integration/test_server.py)."""

from __future__ import annotations

import json

import pytest
from django.conf import settings
from django.test import Client
from rest_framework.test import APIClient

from factory.models import ApiToken
from jobs.models import Job
from tests.conftest import job_spec

pytestmark = pytest.mark.django_db


def spec_of_size(size: int) -> bytes:
    """A valid job spec of about `size` bytes: its command written as JSON escapes (a command may
    hold 64 KiB, which JSON can carry in several times as many bytes)."""
    spec = job_spec(tenant="demo-lab", gpu_type="h100", command="")
    empty = len(json.dumps(spec))
    spec["command"] = "é" * ((size - empty) // 6)
    return json.dumps(spec).encode()


def post_json(client, path: str, body: bytes, **extra):
    return client.generic("POST", path, body, content_type="application/json", **extra)


def test_a_large_body_without_credentials_is_refused_before_anything_else(db):
    body = (
        b'{"username": "researcher", "password": "' + b"x" * settings.FACTORY_ANONYMOUS_MAX_BODY_BYTES + b'"}'
    )
    response = post_json(Client(), "/api/v1/auth/token/", body)
    assert response.status_code == 413
    assert b"before signing in" in response.content
    # Not even a sign-in form of that size; a normal one goes through.
    form = Client().post("/login/", {"username": "researcher", "password": "x" * 20_000})
    assert form.status_code == 413
    assert Client().post("/login/", {"username": "nobody", "password": "x"}).status_code == 200


def test_a_signed_in_api_client_may_send_a_larger_body(owner, cluster, quotas):
    body = spec_of_size(180 * 1024)
    assert len(body) > settings.FACTORY_ANONYMOUS_MAX_BODY_BYTES
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {ApiToken.issue(owner)[1]}")
    response = post_json(client, "/api/v1/jobs/", body)
    assert response.status_code == 202, response.content
    assert len(Job.objects.get().command) == len(json.loads(body)["command"])


def test_the_same_body_with_a_bad_token_or_none_is_refused(owner, cluster):
    body = spec_of_size(180 * 1024)
    assert post_json(APIClient(), "/api/v1/jobs/", body).status_code == 413
    bad = APIClient()
    bad.credentials(HTTP_AUTHORIZATION="Token " + "0" * 64)
    assert post_json(bad, "/api/v1/jobs/", body).status_code == 413
    assert not Job.objects.exists()


def test_a_signed_in_page_may_send_a_larger_body(client, owner, cluster, quotas):
    client.force_login(owner)
    response = client.post(
        "/jobs/new/",
        {"tenant": "", "name": "big", "command": "x" * 60_000, "gpu_type": "", "gpu_count": 1},
    )
    assert response.status_code in (200, 400)  # the form answered, whatever it made of the input


def test_no_one_may_send_more_than_the_signed_in_limit(owner):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {ApiToken.issue(owner)[1]}")
    response = post_json(client, "/api/v1/jobs/", b" " * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1))
    assert response.status_code == 413
