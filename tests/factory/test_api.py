from __future__ import annotations

import pytest

from factory.models import Cluster, GpuType, Membership, Tenant
from tests.jobs.test_api import client_for

pytestmark = pytest.mark.django_db


def test_platform_admin_creates_a_tenant_and_adds_members(platform_admin, owner):
    api = client_for(platform_admin)
    response = api.post(
        "/api/v1/tenants/",
        {"slug": "vision", "name": "Vision", "cost_center": "CC-7", "regions": ["eu"]},
        format="json",
    )
    assert response.status_code == 201, response.content
    assert Tenant.objects.get(slug="vision").regions == ["eu"]
    added = api.post(
        "/api/v1/tenants/vision/members/", {"username": "researcher", "role": "admin"}, format="json"
    )
    assert added.status_code == 201, added.content
    assert Membership.objects.get(tenant__slug="vision", user=owner).role == "admin"
    again = api.post("/api/v1/tenants/vision/members/", {"username": "researcher"}, format="json")
    assert again.status_code == 400 and "username" in again.json()


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"slug": "Bad Slug", "name": "x"}, "slug"),
        ({"slug": "-lead", "name": "x"}, "slug"),
        ({"slug": "ok"}, "name"),
        ({"slug": "ok", "name": "x", "regions": "eu"}, "regions"),
        ({"slug": "ok", "name": "x", "parent": "nope"}, "parent"),
        ({"slug": "demo-lab", "name": "dup"}, "slug"),
    ],
)
def test_bad_tenant_input_is_rejected_per_field(platform_admin, tenant, payload, field):
    response = client_for(platform_admin).post("/api/v1/tenants/", payload, format="json")
    assert response.status_code == 400
    assert field in response.json()
    assert Tenant.objects.count() == 1


def test_members_cannot_create_tenants_and_see_only_their_own(owner, other_tenant):
    api = client_for(owner)
    assert api.post("/api/v1/tenants/", {"slug": "x", "name": "x"}, format="json").status_code == 403
    assert [t["slug"] for t in api.get("/api/v1/tenants/").json()["results"]] == ["demo-lab"]
    assert api.get("/api/v1/tenants/other-lab/").status_code == 404
    assert api.get("/api/v1/tenants/other-lab/members/").status_code == 404


def test_tenant_admin_adds_members_to_own_tenant_only(tenant_admin, outsider, other_tenant):
    api = client_for(tenant_admin)
    response = api.post("/api/v1/tenants/demo-lab/members/", {"username": "outsider"}, format="json")
    assert response.status_code == 201
    assert (
        api.post("/api/v1/tenants/other-lab/members/", {"username": "labadmin"}, format="json").status_code
        == 404
    )
    unknown = api.post("/api/v1/tenants/demo-lab/members/", {"username": "ghost"}, format="json")
    assert unknown.status_code == 400 and "ghost" in unknown.json()["username"][0]


def test_plain_member_cannot_add_members(owner, teammate):
    api = client_for(owner)
    listing = api.get("/api/v1/tenants/demo-lab/members/").json()["results"]
    assert {m["username"] for m in listing} == {"researcher", "teammate"}
    response = api.post(
        "/api/v1/tenants/demo-lab/members/", {"username": "teammate", "role": "admin"}, format="json"
    )
    assert response.status_code == 403


def test_cluster_connection_is_write_only_and_validated(platform_admin, owner, cluster):
    api = client_for(platform_admin)
    bad = api.post(
        "/api/v1/clusters/",
        {"slug": "c2", "name": "C2", "kind": "local", "connection": {"token": "s3cret"}},
        format="json",
    )
    assert bad.status_code == 400 and "connection" in bad.json()
    good = api.post(
        "/api/v1/clusters/",
        {"slug": "c2", "name": "C2", "kind": "local", "connection": {"root": "/tmp/x"}},
        format="json",
    )
    assert good.status_code == 201, good.content
    assert "connection" not in good.json()
    assert Cluster.objects.get(slug="c2").connection == {"root": "/tmp/x"}
    seen = client_for(owner).get("/api/v1/clusters/").json()["results"]
    assert {c["slug"] for c in seen} == {"local", "c2"}
    assert all("connection" not in c for c in seen)
    assert client_for(owner).post("/api/v1/clusters/", {"slug": "c3"}, format="json").status_code == 403


def test_gpu_types_are_listed(owner, cluster):
    slugs = [g["slug"] for g in client_for(owner).get("/api/v1/gpu-types/").json()["results"]]
    assert slugs == ["a100", "h100"]


def test_gpu_type_in_use_cannot_be_deleted(platform_admin, cluster, h100):
    api = client_for(platform_admin)
    response = api.delete("/api/v1/gpu-types/h100/")
    assert response.status_code == 409
    assert "pools" in response.json()["detail"]
    assert GpuType.objects.filter(slug="h100").exists()
    GpuType.objects.create(slug="l4", name="L4", memory_gb=24, board_power_watts=72)
    assert api.delete("/api/v1/gpu-types/l4/").status_code == 204


def test_unknown_api_url_answers_json_404(owner):
    response = client_for(owner).get("/api/v1/no-such-thing/")
    assert response.status_code == 404
    assert response.json() == {"detail": "Not found."}


@pytest.mark.parametrize(
    "url",
    ["/api/v1/gpu-types/h1%00/", "/api/v1/tenants/demo%00/", "/api/v1/tenants/demo-lab/members/res%00/"],
)
def test_nul_in_a_path_is_not_found(platform_admin, tenant, cluster, url):
    response = client_for(platform_admin).get(url)
    assert response.status_code == 404
    assert response.json() == {"detail": "Not found."}


@pytest.mark.parametrize(
    ("url", "payload"),
    [
        ("/api/v1/tenants/", {"slug": "lab", "name": "Lab", "parent": "demo\x00"}),
        ("/api/v1/tenants/demo-lab/members/", {"username": "research\x00"}),
        ("/api/v1/quotas/", {"tenant": "demo-lab", "gpu_type": "h1\x00"}),
    ],
)
def test_nul_in_a_reference_is_a_field_error(platform_admin, tenant, cluster, url, payload):
    response = client_for(platform_admin).post(url, payload, format="json")
    assert response.status_code == 400
    [field] = [name for name, value in payload.items() if "\x00" in value]
    assert response.json()[field] == ["Null characters are not allowed."]


def test_member_with_a_dot_in_the_username_is_found(owner, tenant, django_user_model):
    user = django_user_model.objects.create_user(username="j.doe", password="x")
    Membership.objects.create(user=user, tenant=tenant)
    response = client_for(owner).get("/api/v1/tenants/demo-lab/members/j.doe/")
    assert response.status_code == 200
    assert response.json()["username"] == "j.doe"
