"""API tokens: a token's user is remembered briefly per process, and forgotten at once when the
token is deleted or the user changes (deactivated, new password)."""

from __future__ import annotations

import time

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db

URL = "/api/v1/tenants/"


def token_client(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


def token_lookups(client) -> tuple[int, int]:
    """(status, token look-ups) of one API request."""
    with CaptureQueriesContext(connection) as queries:
        status = client.get(URL).status_code
    return status, sum('FROM "authtoken_token"' in q["sql"] for q in queries.captured_queries)


def test_a_tokens_user_is_looked_up_once_then_remembered(owner):
    client = token_client(owner)
    assert token_lookups(client) == (200, 1)
    assert token_lookups(client) == (200, 0)


def test_a_deleted_token_is_refused_at_once(owner):
    client = token_client(owner)
    assert token_lookups(client)[0] == 200
    Token.objects.filter(user=owner).get().delete()
    assert token_lookups(client) == (401, 1)


def test_a_deactivated_user_is_refused_at_once(owner):
    client = token_client(owner)
    assert token_lookups(client)[0] == 200
    owner.is_active = False
    owner.save()
    assert token_lookups(client)[0] == 401


def test_the_memory_expires_and_can_be_turned_off(owner, settings):
    client = token_client(owner)
    settings.FACTORY_TOKEN_CACHE_SECONDS = 0.2
    assert token_lookups(client) == (200, 1)
    time.sleep(0.3)
    assert token_lookups(client) == (200, 1)
    settings.FACTORY_TOKEN_CACHE_SECONDS = 0
    assert token_lookups(client) == (200, 1)
    assert token_lookups(client) == (200, 1)


def test_an_unknown_token_is_refused(db):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token " + "0" * 40)
    assert client.get(URL).status_code == 401
