from __future__ import annotations

from unittest import mock

import pytest

from factory.adapters import BackendUnavailable
from factory.adapters.local import LocalAdapter
from factory.models import Cluster
from factory.tasks import check_cluster_health

pytestmark = pytest.mark.django_db


def test_health_check_records_what_the_backend_reports(cluster):
    assert check_cluster_health() == {"local": True}
    cluster.refresh_from_db()
    assert cluster.health["ok"] and cluster.health_checked_at
    assert {p["gpu_type"] for p in cluster.health["pools"]} == {"h100", "a100"}


def test_unreachable_backend_is_recorded_as_unhealthy(cluster):
    with mock.patch.object(LocalAdapter, "health", autospec=True, side_effect=BackendUnavailable("no route")):
        assert check_cluster_health() == {"local": False}
    cluster.refresh_from_db()
    assert cluster.health == {"ok": False, "message": "no route", "pools": []}


def test_clusters_page_shows_health_and_pools(client, owner, cluster):
    check_cluster_health()
    Cluster.objects.create(slug="old", name="Old", kind="local", enabled=False)
    client.force_login(owner)
    page = client.get("/clusters/").content.decode()
    assert "Healthy" in page and "Disabled" in page and "h100" in page
