"""/healthz and /readyz: unauthenticated, cheap, nothing secret in the answer, and answered for
an orchestrator's probe (a pod address as Host, plain HTTP) whatever the site's host and HTTPS
settings. Through the real servers and proxy in tests/integration/test_server.py."""

from __future__ import annotations

import json

import pytest
from django.db.migrations.recorder import MigrationRecorder
from django.test import Client

from factory import health
from factory.celery import app

pytestmark = pytest.mark.django_db


@pytest.fixture
def probe(settings):
    settings.SECURE_SSL_REDIRECT = True  # as in production: every other plain-HTTP request is redirected
    settings.ALLOWED_HOSTS = ["factory.example.org"]
    return Client(HTTP_HOST="10.42.0.7:8000")


@pytest.fixture
def fresh_readiness(monkeypatch):
    monkeypatch.setattr(health, "_migrated", False)


def test_healthz_answers_without_signing_in_or_a_known_host(probe):
    response = probe.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response["Cache-Control"] == "no-store"
    assert not response.cookies  # no session, no CSRF cookie
    # Any other path from the same probe is refused as an unknown host.
    assert probe.get("/login/").status_code == 400


def test_readyz_checks_the_database_the_broker_and_the_migrations(probe, fresh_readiness):
    response = probe.get("/readyz")
    assert response.status_code == 200, response.content
    assert response.json() == {
        "status": "ready",
        "checks": {"database": "ok", "migrations": "ok", "broker": "ok"},
    }
    assert probe.head("/readyz").status_code == 200


def test_readyz_is_not_ready_while_a_migration_is_pending(probe, fresh_readiness):
    last = MigrationRecorder.Migration.objects.filter(app="jobs").order_by("-id").first()
    last.delete()  # as if the new code's migration had not run yet (rolled back with the test)
    response = probe.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"] == {"database": "ok", "migrations": "failing", "broker": "ok"}


def test_readyz_is_not_ready_without_the_broker_and_says_nothing_of_it(probe, fresh_readiness, monkeypatch):
    # A broker address where nothing listens (the port of a socket bound and never listened on).
    import socket

    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        url = f"redis://:broker-password@127.0.0.1:{unused.getsockname()[1]}/0"
        monkeypatch.setattr(app.conf, "broker_url", url)
        monkeypatch.setattr(app.conf, "broker_write_url", None)
        response = probe.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["broker"] == "failing"
    body = response.content.decode()
    assert "broker-password" not in body and "127.0.0.1" not in body and "redis" not in body
    assert json.loads(body)["checks"]["database"] == "ok"
