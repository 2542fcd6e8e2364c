from __future__ import annotations

import json
from unittest import mock

import pytest
import redis

from factory.adapters import BackendUnavailable
from factory.adapters.local import LocalAdapter
from factory.models import Cluster
from factory.tasks import check_cluster, check_cluster_health

pytestmark = pytest.mark.django_db


def test_health_check_records_what_the_backend_reports(cluster):
    assert check_cluster(cluster.pk) is True
    cluster.refresh_from_db()
    assert cluster.health["ok"] and cluster.health_checked_at
    assert {p["gpu_type"] for p in cluster.health["pools"]} == {"h100", "a100"}


def test_unreachable_backend_is_recorded_as_unhealthy(cluster):
    with mock.patch.object(LocalAdapter, "health", autospec=True, side_effect=BackendUnavailable("no route")):
        assert check_cluster(cluster.pk) is False
    cluster.refresh_from_db()
    assert cluster.health == {"ok": False, "message": "no route", "pools": []}


def test_periodic_check_asks_each_enabled_cluster_on_its_kinds_queue(cluster, settings):
    """One check per cluster, published to the real broker on the queue of its kind: a hung
    backend delays only its own kind's checks."""
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    client.delete("dispatch-local", "default")
    Cluster.objects.create(slug="old", name="Old", kind="local", enabled=False)
    assert check_cluster_health() == 1
    messages = [json.loads(raw) for raw in client.lrange("dispatch-local", 0, -1)]
    assert [(m["headers"]["task"], m["headers"]["argsrepr"]) for m in messages] == [
        ("factory.tasks.check_cluster", f"({cluster.pk},)")
    ]
    assert messages[0]["headers"]["expires"]  # a check not run before the next is due is dropped
    assert client.llen("default") == 0
    client.delete("dispatch-local")


def test_clusters_page_shows_health_and_pools(client, owner, cluster):
    check_cluster(cluster.pk)
    Cluster.objects.create(slug="old", name="Old", kind="local", enabled=False)
    client.force_login(owner)
    page = client.get("/clusters/").content.decode()
    assert "Healthy" in page and "Disabled" in page and "h100" in page
