from __future__ import annotations

import pytest

from factory.models import Pool
from tests.jobs.test_api import client_for
from tests.support import admit

pytestmark = pytest.mark.django_db


def test_platform_admin_creates_changes_and_deletes_a_pool_with_its_cluster(platform_admin, cluster, h100):
    api = client_for(platform_admin)
    Pool.objects.filter(cluster=cluster, gpu_type=h100).delete()
    created = api.post(
        "/api/v1/clusters/local/pools/",
        {"gpu_type": "h100", "capacity": 8, "node_selector": {"gpu": "h100"}},
        format="json",
    )
    assert created.status_code == 201, created.content
    assert created.json() == {
        "gpu_type": "h100",
        "capacity": 8,
        "partition": "",
        "node_selector": {"gpu": "h100"},
    }
    listed = api.get("/api/v1/clusters/local/pools/").json()["results"]
    assert [p["gpu_type"] for p in listed] == ["a100", "h100"]
    changed = api.patch("/api/v1/clusters/local/pools/h100/", {"capacity": 16}, format="json")
    assert changed.status_code == 200 and changed.json()["capacity"] == 16
    assert api.get("/api/v1/clusters/local/").json()["pools"][1]["capacity"] == 16
    assert api.delete("/api/v1/clusters/local/pools/h100/").status_code == 204
    assert not Pool.objects.filter(gpu_type=h100).exists()


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"gpu_type": "a100", "capacity": 2}, "gpu_type"),  # the cluster has an a100 pool
        ({"gpu_type": "b200", "capacity": 2}, "gpu_type"),
        ({"gpu_type": "h100", "capacity": 0}, "capacity"),
        ({"gpu_type": "h100", "capacity": 2, "node_selector": ["x"]}, "node_selector"),
        ({"gpu_type": "h100", "capacity": 2, "cluster": "other"}, "cluster"),
    ],
)
def test_bad_pool_input_is_refused_per_field(platform_admin, cluster, h100, payload, field):
    Pool.objects.filter(gpu_type=h100).delete()
    response = client_for(platform_admin).post("/api/v1/clusters/local/pools/", payload, format="json")
    assert response.status_code == 400
    assert field in response.json()
    assert Pool.objects.count() == 1


def test_a_pools_gpu_type_does_not_change(platform_admin, cluster):
    response = client_for(platform_admin).patch(
        "/api/v1/clusters/local/pools/h100/", {"gpu_type": "a100"}, format="json"
    )
    assert response.status_code == 400 and "gpu_type" in response.json()


def test_members_read_pools_but_do_not_change_them(owner, cluster):
    api = client_for(owner)
    assert api.get("/api/v1/clusters/local/pools/h100/").json()["capacity"] == 4
    assert api.patch("/api/v1/clusters/local/pools/h100/", {"capacity": 1}, format="json").status_code == 403
    assert api.delete("/api/v1/clusters/local/pools/h100/").status_code == 403
    body = {"gpu_type": "h100", "capacity": 1}
    assert api.post("/api/v1/clusters/local/pools/", body, format="json").status_code == 403
    assert api.get("/api/v1/clusters/nowhere/pools/").status_code == 404
    assert api.get("/api/v1/clusters/local/pools/b200/").status_code == 404
    assert Pool.objects.get(gpu_type__slug="h100").capacity == 4


def test_anonymous_users_get_401(client, cluster):
    assert client.get("/api/v1/clusters/local/pools/").status_code == 401


def test_a_pool_whose_gpus_jobs_hold_is_not_deleted(
    platform_admin, cluster, make_job, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks():
        admit(make_job(name="holding"), cluster)
    response = client_for(platform_admin).delete("/api/v1/clusters/local/pools/h100/")
    assert response.status_code == 409
    assert response.json() == {"detail": "Still in use by 1 jobs holding its GPUs; it cannot be deleted."}
    assert Pool.objects.filter(gpu_type__slug="h100").exists()


def test_a_pool_change_reaches_job_submission_at_once(platform_admin, cluster, h100):
    """Submission caches where a GPU type can run; a pool changed by API is seen at once."""
    from jobs.submission import placeable_pools

    def capacity() -> int:
        return max(pool.shape.capacity for pool in placeable_pools(h100))

    assert capacity() == 4
    client_for(platform_admin).patch("/api/v1/clusters/local/pools/h100/", {"capacity": 12}, format="json")
    assert capacity() == 12
