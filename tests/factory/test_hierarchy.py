"""Organisations → departments → projects: the tree, who administers what along it, and the
rules that keep it a tree."""

from __future__ import annotations

import threading

import pytest
from django.db import IntegrityError, connection, transaction

from factory import hierarchy
from factory.choices import Role
from factory.hierarchy import TenantTree
from factory.models import Membership, Tenant
from jobs.choices import JobState
from jobs.models import Job
from tests.jobs.test_api import client_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def org(db):
    """uni → physics → (lattice, optics); uni → chemistry."""
    uni = Tenant.objects.create(slug="uni", name="University", cost_center="CC-UNI")
    physics = Tenant.objects.create(slug="physics", name="Physics", parent=uni, cost_center="CC-PHY")
    lattice = Tenant.objects.create(slug="lattice", name="Lattice QCD", parent=physics)
    optics = Tenant.objects.create(slug="optics", name="Optics", parent=physics)
    chemistry = Tenant.objects.create(slug="chemistry", name="Chemistry", parent=uni)
    return {t.slug: t for t in (uni, physics, lattice, optics, chemistry)}


@pytest.fixture
def dept_admin(django_user_model, org):
    user = django_user_model.objects.create_user("headofphysics", password="pw-headofphysics")
    Membership.objects.create(user=user, tenant=org["physics"], role=Role.ADMIN)
    return user


def test_the_tree_knows_paths_departments_subtrees_and_roll_ups(org):
    tree = TenantTree.load()
    ids = {slug: t.pk for slug, t in org.items()}
    assert tree.path(ids["lattice"]) == (ids["lattice"], ids["physics"], ids["uni"])
    assert [tree.department(ids[s]) for s in ("lattice", "physics", "uni", "chemistry")] == [
        ids["physics"],
        ids["physics"],
        ids["uni"],
        ids["chemistry"],
    ]
    assert set(tree.descendants(ids["physics"])) == {ids["lattice"], ids["optics"]}
    totals = tree.roll_up({ids["lattice"]: 3, ids["optics"]: 4, ids["chemistry"]: 1})
    assert (totals[ids["physics"]], totals[ids["uni"]], totals[ids["lattice"]]) == (7, 8, 3)
    assert [Tenant.objects.get(pk=pk).slug for pk, _ in tree.walk({v: k for k, v in ids.items()})] == [
        "uni",
        "chemistry",
        "physics",
        "lattice",
        "optics",
    ]


def test_a_tenant_cannot_be_placed_below_itself_or_a_tenant_below_it(org, platform_admin):
    api = client_for(platform_admin)
    for parent in ("lattice", "physics"):
        response = api.patch("/api/v1/tenants/physics/", {"parent": parent}, format="json")
        assert response.status_code == 400
        assert "own ancestor" in response.json()["parent"][0] or "own parent" in response.json()["parent"][0]
    org["physics"].refresh_from_db()
    assert org["physics"].parent == org["uni"]
    # A move that keeps it a tree is fine.
    assert api.patch("/api/v1/tenants/optics/", {"parent": "chemistry"}, format="json").status_code == 200
    assert Tenant.objects.get(slug="optics").parent == org["chemistry"]


def test_the_database_refuses_a_loop_that_skips_validation(org):
    assert connection.vendor == "postgresql"
    with pytest.raises(IntegrityError, match="its own ancestor"), transaction.atomic():
        Tenant.objects.filter(slug="uni").update(parent=org["lattice"])
    with pytest.raises(IntegrityError), transaction.atomic():
        Tenant.objects.filter(slug="uni").update(parent=org["uni"])
    assert Tenant.objects.get(slug="uni").parent is None


@pytest.mark.django_db(transaction=True)
def test_two_moves_at_once_cannot_close_a_loop_between_them():
    """Each move alone keeps the tree; together they would make a loop. The first holds its
    transaction open while the second tries: the second waits, then sees the first and fails."""
    assert connection.vendor == "postgresql"
    a = Tenant.objects.create(slug="a", name="A")
    b = Tenant.objects.create(slug="b", name="B")
    first_moved, results = threading.Event(), {}

    def first():
        try:
            with transaction.atomic():
                Tenant.objects.filter(pk=a.pk).update(parent=b)  # a below b
                first_moved.set()
                threading.Event().wait(0.3)  # the second is waiting on the tree's lock by now
            results["first"] = "moved"
        except IntegrityError:
            results["first"] = "refused"
        finally:
            connection.close()

    def second():
        first_moved.wait(5)
        try:
            with transaction.atomic():
                Tenant.objects.filter(pk=b.pk).update(parent=a)  # b below a: a loop with the first
            results["second"] = "moved"
        except IntegrityError:
            results["second"] = "refused"
        finally:
            connection.close()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert results == {"first": "moved", "second": "refused"}
    assert dict(Tenant.objects.values_list("slug", "parent__slug")) == {"a": "b", "b": None}


def test_a_department_admin_administers_its_projects_and_nothing_above_or_beside(
    org, dept_admin, django_user_model, client
):
    researcher = django_user_model.objects.create_user("lattice-member", password="pw-lattice-member")
    Membership.objects.create(user=researcher, tenant=org["lattice"])
    api = client_for(dept_admin)
    seen = {t["slug"] for t in api.get("/api/v1/tenants/").json()["results"]}
    assert seen == {"physics", "lattice", "optics"}
    assert api.get("/api/v1/tenants/chemistry/").status_code == 404
    assert api.get("/api/v1/tenants/uni/members/").status_code == 404

    added = api.post("/api/v1/tenants/optics/members/", {"username": "lattice-member"}, format="json")
    assert added.status_code == 201
    assert Membership.objects.filter(user=researcher, tenant=org["optics"]).exists()
    client.force_login(dept_admin)
    page = client.get("/tenants/lattice/members/").content.decode()
    assert "Add a member" in page

    # A project's member sees the project only, and administers nothing.
    member_api = client_for(researcher)
    assert {t["slug"] for t in member_api.get("/api/v1/tenants/").json()["results"]} == {"lattice", "optics"}
    refused = member_api.post(
        "/api/v1/tenants/lattice/members/", {"username": "headofphysics"}, format="json"
    )
    assert refused.status_code == 403


def test_a_department_admin_sees_and_cancels_its_projects_jobs(org, dept_admin, django_user_model, h100):
    owner = django_user_model.objects.create_user("optician", password="pw-optician")
    Membership.objects.create(user=owner, tenant=org["optics"])
    job = Job.objects.create(
        tenant=org["optics"],
        owner=owner,
        name="lens",
        command="true",
        gpu_type=h100,
        gpu_count=1,
        time_limit_minutes=5,
    )
    other = Job.objects.create(
        tenant=org["chemistry"],
        owner=owner,
        name="mol",
        command="true",
        gpu_type=h100,
        gpu_count=1,
        time_limit_minutes=5,
    )
    assert set(Job.objects.visible_to(dept_admin)) == {job}
    assert set(Job.objects.cancellable_by(dept_admin)) == {job}
    api = client_for(dept_admin)
    assert api.get(f"/api/v1/jobs/{other.pk}/").status_code == 404
    assert api.post(f"/api/v1/jobs/{job.pk}/cancel/").status_code == 202
    job.refresh_from_db()
    assert job.state == JobState.CANCELLED


def test_deleting_a_department_with_projects_jobs_or_ledger_lines_is_refused(
    org, platform_admin, client, h100
):
    api = client_for(platform_admin)
    refused = api.delete("/api/v1/tenants/physics/")
    assert refused.status_code == 409
    assert refused.json()["detail"] == "physics still has 2 tenants below it; it cannot be deleted."
    owner = platform_admin
    Job.objects.create(
        tenant=org["optics"],
        owner=owner,
        name="lens",
        command="true",
        gpu_type=h100,
        gpu_count=1,
        time_limit_minutes=5,
    )
    refused = api.delete("/api/v1/tenants/optics/")
    assert refused.status_code == 409 and "1 jobs" in refused.json()["detail"]

    client.force_login(platform_admin)
    page = client.post("/tenants/", {"action": "delete", "tenant": "physics"}, follow=True)
    assert page.status_code == 400 and "physics still has 2 tenants below it" in page.content.decode()
    assert Tenant.objects.filter(slug="physics").exists()

    assert api.delete("/api/v1/tenants/lattice/").status_code == 204
    assert not Tenant.objects.filter(slug="lattice").exists()


def test_platform_admins_build_the_tree_and_name_admins_on_the_page(
    client, platform_admin, django_user_model
):
    django_user_model.objects.create_user("head", password="pw-head")
    client.force_login(platform_admin)
    assert (
        client.post("/tenants/", {"action": "create", "new-slug": "uni", "new-name": "Uni"}).status_code
        == 302
    )
    created = client.post(
        "/tenants/", {"action": "create", "new-slug": "physics", "new-name": "Physics", "new-parent": "uni"}
    )
    assert created.status_code == 302
    client.post(
        "/tenants/", {"action": "create", "new-slug": "lattice", "new-name": "L", "new-parent": "physics"}
    )
    named = client.post("/tenants/", {"action": "admin", "admin-tenant": "physics", "admin-username": "head"})
    assert named.status_code == 302
    assert Membership.objects.get(user__username="head", tenant__slug="physics").role == Role.ADMIN

    loop = client.post("/tenants/", {"action": "move", "move-tenant": "uni", "move-parent": "lattice"})
    assert loop.status_code == 400 and "own ancestor" in loop.content.decode()
    nobody = client.post(
        "/tenants/", {"action": "admin", "admin-tenant": "physics", "admin-username": "ghost"}
    )
    assert nobody.status_code == 400 and "No active user named ghost." in nobody.content.decode()

    page = client.get("/tenants/").content.decode()
    assert (
        page.index('id="tenant-uni"') < page.index('id="tenant-physics"') < page.index('id="tenant-lattice"')
    )
    assert 'data-depth="2"' in page and "head" in page


def test_only_platform_admins_change_the_tree(client, dept_admin, org):
    client.force_login(dept_admin)
    page = client.get("/tenants/")
    assert page.status_code == 200 and "lattice" in page.content.decode()
    assert "chemistry" not in page.content.decode()
    response = client.post(
        "/tenants/", {"action": "create", "new-slug": "x", "new-name": "X", "new-parent": "physics"}
    )
    assert response.status_code == 403
    assert client_for(dept_admin).delete("/api/v1/tenants/lattice/").status_code == 403
    assert not Tenant.objects.filter(slug="x").exists()


def test_hierarchy_delete_and_move_helpers_keep_their_rules(org):
    with pytest.raises(Exception, match="2 tenants below it"):
        hierarchy.delete(org["physics"])
    hierarchy.move(org["optics"], None)
    assert Tenant.objects.get(slug="optics").parent is None


def test_deleting_a_billing_account_tenant_is_refused_with_a_message(client, platform_admin):
    from billing.models import BillingAccount

    acme = Tenant.objects.create(slug="acme", name="Acme")
    BillingAccount.objects.create(tenant=acme, currency="USD")
    client.force_login(platform_admin)
    page = client.post("/tenants/", {"action": "delete", "tenant": "acme"})
    assert page.status_code == 400 and "acme still has a billing account" in page.content.decode()
    assert Tenant.objects.filter(slug="acme").exists()
