from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from factory import roles
from factory.models import Cluster, Identity, Membership, Tenant

pytestmark = pytest.mark.django_db


def test_demo_seed_refuses_to_run_in_production(settings):
    settings.DEBUG = False
    with pytest.raises(CommandError, match="only created with DEBUG=1"):
        call_command("seed_demo")
    assert not get_user_model().objects.exists()


def test_demo_seed_creates_one_login_per_role_and_can_run_twice(settings, monkeypatch, capsys):
    settings.DEBUG = True
    monkeypatch.setenv("DEMO_PASSWORD", "s3cret-demo")
    call_command("seed_demo")
    call_command("seed_demo")
    users = {u.username: u for u in get_user_model().objects.all()}
    assert set(users) == {"researcher", "labadmin", "deptadmin", "platform", "finance", "auditor"}
    assert all(u.check_password("s3cret-demo") for u in users.values())
    memberships = set(Membership.objects.values_list("user__username", "tenant__slug", "role"))
    assert memberships == {
        ("researcher", "demo-lab", "member"),
        ("labadmin", "demo-lab", "admin"),  # a project's admin
        ("deptadmin", "demo-dept", "admin"),  # its department's admin
    }
    assert Tenant.objects.get(slug="demo-lab").parent.slug == "demo-dept"
    held = {name: roles.platform_roles(user) for name, user in users.items()}
    assert held == {
        "researcher": [],
        "labadmin": [],
        "deptadmin": [],
        "platform": ["platform-admin"],
        "finance": ["finance"],
        "auditor": ["auditor"],
    }
    assert not any(u.is_staff or u.is_superuser for u in users.values())
    printed = capsys.readouterr().out
    assert "Logins (password: s3cret-demo)" in printed
    for name in users:
        assert f"    {name} " in printed
    local = Cluster.objects.get(slug="local")
    assert sorted((p.gpu_type.slug, p.capacity) for p in local.pools.all()) == [("a100", 4), ("h100", 4)]


def test_platform_admin_manages_clusters_in_the_admin(client, platform_admin, cluster):
    platform_admin.is_superuser = True
    platform_admin.save()
    client.force_login(platform_admin)
    Cluster.objects.filter(pk=cluster.pk).update(connection={"root": "/srv/secret-path"})
    assert client.get("/admin/factory/cluster/").status_code == 200
    change = client.get(f"/admin/factory/cluster/{cluster.pk}/change/")
    assert change.status_code == 200
    assert "/srv/secret-path" not in change.content.decode()
    assert client.get("/admin/factory/gputype/add/").status_code == 200
    assert client.get("/admin/jobs/job/").status_code == 200


def test_cluster_admin_keeps_stored_connection_when_left_empty(client, platform_admin, cluster):
    platform_admin.is_superuser = True
    platform_admin.save()
    client.force_login(platform_admin)
    Cluster.objects.filter(pk=cluster.pk).update(connection={"root": "/srv/keep"})
    data = {
        "slug": "local",
        "name": "Renamed",
        "kind": "local",
        "region": "local",
        "connection": "{}",
        "enabled": "on",
        "pue": "1.20",
        "pools-TOTAL_FORMS": "0",
        "pools-INITIAL_FORMS": "0",
        "pools-MIN_NUM_FORMS": "0",
        "pools-MAX_NUM_FORMS": "1000",
    }
    response = client.post(f"/admin/factory/cluster/{cluster.pk}/change/", data)
    assert response.status_code == 302, response.content.decode()[:2000]
    cluster.refresh_from_db()
    assert cluster.name == "Renamed" and cluster.connection == {"root": "/srv/keep"}


def test_cluster_with_bad_connection_settings_is_refused(client, platform_admin, cluster):
    platform_admin.is_superuser = True
    platform_admin.save()
    client.force_login(platform_admin)
    data = {
        "slug": "c2",
        "name": "C2",
        "kind": "local",
        "region": "local",
        "connection": '{"nope": 1}',
        "enabled": "on",
        "pue": "1.20",
        "pools-TOTAL_FORMS": "0",
        "pools-INITIAL_FORMS": "0",
        "pools-MIN_NUM_FORMS": "0",
        "pools-MAX_NUM_FORMS": "1000",
    }
    response = client.post("/admin/factory/cluster/add/", data)
    assert response.status_code == 200
    assert "Unknown connection setting" in response.content.decode()
    assert not Cluster.objects.filter(slug="c2").exists()


def test_demo_seed_can_register_the_local_slurm(settings):
    settings.DEBUG = True
    call_command("seed_demo", "--with-slurm")
    slurm = Cluster.objects.get(slug="slurm-local")
    assert slurm.kind == "slurm"
    assert [(p.gpu_type.slug, p.capacity, p.partition) for p in slurm.pools.all()] == [("h100", 8, "gpu")]
    accounts = dict(Identity.objects.values_list("user__username", "posix_username"))
    assert accounts == {"researcher": "aif-alice", "labadmin": "aif-bob"}
