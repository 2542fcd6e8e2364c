"""API tokens: kept as digests, named, several per user, expiring; a token's user is remembered
briefly per process and forgotten at once when the token is revoked or the user changes."""

from __future__ import annotations

import hashlib
import importlib
import time
from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from factory import roles
from factory.choices import PlatformRole
from factory.models import ApiToken

pytestmark = pytest.mark.django_db

URL = "/api/v1/tenants/"
TOKEN_URL = "/api/v1/auth/token/"


def token_client(key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


def token_lookups(client) -> tuple[int, int]:
    """(status, token look-ups) of one API request."""
    with CaptureQueriesContext(connection) as queries:
        status = client.get(URL).status_code
    return status, sum('FROM "factory_apitoken"' in q["sql"] for q in queries.captured_queries)


def test_the_token_endpoint_returns_a_token_once_and_keeps_only_its_digest(owner, settings):
    response = APIClient().post(
        TOKEN_URL, {"username": "researcher", "password": "pw-researcher", "name": "laptop"}
    )
    assert response.status_code == 200, response.content
    key = response.json()["token"]
    token = ApiToken.objects.get(user=owner)
    assert (token.name, response.json()["name"]) == ("laptop", "laptop")
    assert token.digest == hashlib.sha256(key.encode()).hexdigest()
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM factory_apitoken")
        assert not any(key in str(value) for row in cursor.fetchall() for value in row)
    expected = timezone.now() + timedelta(days=settings.FACTORY_TOKEN_DAYS)
    assert abs(token.expires_at - expected) < timedelta(minutes=1)
    assert token_lookups(token_client(key))[0] == 200


def test_a_user_may_hold_several_tokens_with_their_own_expiry(owner, settings):
    client = APIClient()
    first = client.post(TOKEN_URL, {"username": "researcher", "password": "pw-researcher", "name": "ci"})
    second = client.post(
        TOKEN_URL,
        {"username": "researcher", "password": "pw-researcher", "expires_in_days": 7},
        format="json",
    )
    assert first.status_code == second.status_code == 200
    assert ApiToken.objects.filter(user=owner).count() == 2
    week = ApiToken.objects.get(user=owner, name="")
    assert abs(week.expires_at - (timezone.now() + timedelta(days=7))) < timedelta(minutes=1)
    for response in (first, second):
        assert token_lookups(token_client(response.json()["token"]))[0] == 200
    too_long = client.post(
        TOKEN_URL,
        {
            "username": "researcher",
            "password": "pw-researcher",
            "expires_in_days": settings.FACTORY_TOKEN_MAX_DAYS + 1,
        },
        format="json",
    )
    assert too_long.status_code == 400 and "expires_in_days" in too_long.json()


def test_an_expired_token_is_refused(owner):
    token, key = ApiToken.issue(owner)
    ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    response = token_client(key).get(URL)
    assert response.status_code == 401
    assert response.json()["detail"] == "The token has expired."


def test_the_memory_of_a_token_ends_with_the_token(owner):
    token, key = ApiToken.issue(owner)
    ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() + timedelta(seconds=0.5))
    client = token_client(key)
    assert token_lookups(client) == (200, 1)
    time.sleep(0.6)
    assert token_lookups(client) == (401, 1)


def test_an_expired_token_goes_when_its_user_makes_a_new_one(owner):
    old, _ = ApiToken.issue(owner)
    ApiToken.objects.filter(pk=old.pk).update(expires_at=timezone.now() - timedelta(days=1))
    ApiToken.issue(owner)
    assert not ApiToken.objects.filter(pk=old.pk).exists()
    assert ApiToken.objects.filter(user=owner).count() == 1


def test_a_tokens_user_is_looked_up_once_then_remembered(owner):
    client = token_client(ApiToken.issue(owner)[1])
    assert token_lookups(client) == (200, 1)
    assert token_lookups(client) == (200, 0)


def test_a_remembered_users_permissions_cost_no_query_and_follow_a_change_of_roles_at_once(
    owner, tenant, other_tenant
):
    client = token_client(ApiToken.issue(owner)[1])
    assert [t["slug"] for t in client.get(URL).json()["results"]] == ["demo-lab"]
    with CaptureQueriesContext(connection) as queries:
        assert client.get(URL).status_code == 200
    assert not [q for q in queries.captured_queries if "auth_permission" in q["sql"]]
    roles.grant(owner, PlatformRole.AUDITOR)  # in the admin, or at a single sign-on
    assert [t["slug"] for t in client.get(URL).json()["results"]] == ["demo-lab", "other-lab"]
    owner.groups.clear()
    assert [t["slug"] for t in client.get(URL).json()["results"]] == ["demo-lab"]


def test_a_revoked_token_is_refused_at_once(owner):
    token, key = ApiToken.issue(owner)
    client = token_client(key)
    assert token_lookups(client) == (200, 1)
    token.delete()
    assert token_lookups(client) == (401, 1)


def test_a_deactivated_user_is_refused_at_once(owner):
    client = token_client(ApiToken.issue(owner)[1])
    assert token_lookups(client)[0] == 200
    owner.is_active = False
    owner.save()
    assert token_lookups(client)[0] == 401


def test_the_memory_expires_and_can_be_turned_off(owner, settings):
    client = token_client(ApiToken.issue(owner)[1])
    settings.FACTORY_TOKEN_CACHE_SECONDS = 0.2
    assert token_lookups(client) == (200, 1)
    time.sleep(0.3)
    assert token_lookups(client) == (200, 1)
    settings.FACTORY_TOKEN_CACHE_SECONDS = 0
    assert token_lookups(client) == (200, 1)
    assert token_lookups(client) == (200, 1)


@pytest.mark.parametrize("header", ["Token " + "0" * 64, "Token", "Token a b", "Token caf\u00e9"])
def test_an_unknown_or_malformed_token_is_refused(db, header):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)
    assert client.get(URL).status_code == 401


def test_plaintext_tokens_from_before_become_digests_and_keep_working(owner):
    """The data migration, run against a table like Django REST framework's authtoken_token."""
    key = "0123456789abcdef0123456789abcdef01234567"
    with connection.cursor() as cursor:
        cursor.execute(
            'CREATE TABLE authtoken_token ("key" varchar(40) PRIMARY KEY, created timestamp with time zone '
            "NOT NULL, user_id integer NOT NULL)"
        )
        cursor.execute("INSERT INTO authtoken_token VALUES (%s, now(), %s)", [key, owner.pk])
    migration = importlib.import_module("factory.migrations.0006_hash_plaintext_tokens")
    from django.apps import apps

    migration.hash_plaintext_tokens(apps, SimpleNamespace(connection=connection))

    token = ApiToken.objects.get(user=owner)
    assert (token.digest, token.prefix) == (hashlib.sha256(key.encode()).hexdigest(), key[:8])
    assert token.expires_at > timezone.now() + timedelta(days=80)
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM authtoken_token")
        assert cursor.fetchone()[0] == 0
    assert token_lookups(token_client(key))[0] == 200
