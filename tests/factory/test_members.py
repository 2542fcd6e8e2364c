"""Delegated administration: a tenant's admins manage its members and decide requests to join,
in the UI and the API alike, within the same rules."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from factory import members
from factory.choices import JoinState, MembershipSource, Role
from factory.models import JoinRequest, Membership

pytestmark = pytest.mark.django_db


def post(client, slug, **data):
    return client.post(f"/tenants/{slug}/members/", data)


def role_of(user, tenant) -> str | None:
    return Membership.objects.filter(user=user, tenant=tenant).values_list("role", flat=True).first()


def test_a_tenant_admin_adds_members_changes_roles_and_removes_them(
    client, tenant, tenant_admin, owner, outsider, django_user_model
):
    newcomer = django_user_model.objects.create_user("newcomer", password="pw")
    client.force_login(tenant_admin)
    page = client.get(f"/tenants/{tenant.slug}/members/").content.decode()
    assert "researcher" in page and "Add a member" in page

    assert post(client, tenant.slug, action="add", username="newcomer", role="member").status_code == 302
    assert role_of(newcomer, tenant) == Role.MEMBER
    again = post(client, tenant.slug, action="add", username="newcomer", role="member")
    assert again.status_code == 400 and "newcomer is already a member of" in again.content.decode()
    nobody = post(client, tenant.slug, action="add", username="nobody", role="member")
    assert nobody.status_code == 400 and "No active user named nobody." in nobody.content.decode()

    membership = Membership.objects.get(user=newcomer, tenant=tenant)
    post(client, tenant.slug, action="role", membership=membership.pk, role="admin")
    assert role_of(newcomer, tenant) == Role.ADMIN
    post(client, tenant.slug, action="remove", membership=membership.pk)
    assert role_of(newcomer, tenant) is None

    # Another tenant's membership is not reachable through this tenant's page.
    theirs = Membership.objects.get(user=outsider)
    assert post(client, tenant.slug, action="remove", membership=theirs.pk).status_code == 404
    assert Membership.objects.filter(pk=theirs.pk).exists()


def test_members_read_the_list_and_change_nothing_and_outsiders_see_nothing(
    client, tenant, tenant_admin, owner, outsider
):
    client.force_login(owner)
    page = client.get(f"/tenants/{tenant.slug}/members/").content.decode()
    assert "labadmin" in page and "Add a member" not in page
    target = Membership.objects.get(user=tenant_admin)
    assert post(client, tenant.slug, action="remove", membership=target.pk).status_code == 403
    assert post(client, tenant.slug, action="add", username="outsider", role="admin").status_code == 403
    client.force_login(outsider)
    assert client.get(f"/tenants/{tenant.slug}/members/").status_code == 404
    assert post(client, tenant.slug, action="remove", membership=target.pk).status_code == 404
    assert Membership.objects.filter(tenant=tenant).count() == 2


def test_a_tenant_is_never_left_without_an_admin_by_a_tenant_admin(
    client, tenant, tenant_admin, platform_admin
):
    mine = Membership.objects.get(user=tenant_admin)
    client.force_login(tenant_admin)
    for data in ({"action": "role", "role": "member"}, {"action": "remove"}):
        response = post(client, tenant.slug, membership=mine.pk, **data)
        assert response.status_code == 400 and "would have no admin left" in response.content.decode()
    assert role_of(tenant_admin, tenant) == Role.ADMIN
    api = APIClient()
    api.force_authenticate(tenant_admin)
    response = api.delete(f"/api/v1/tenants/{tenant.slug}/members/labadmin/")
    assert response.status_code == 400 and "would have no admin left" in str(response.json())
    client.force_login(platform_admin)  # a platform admin may (and can always add one back)
    assert post(client, tenant.slug, membership=mine.pk, action="role", role="member").status_code == 302
    assert role_of(tenant_admin, tenant) == Role.MEMBER


def test_memberships_from_single_sign_on_are_changed_at_the_identity_provider(
    client, tenant, tenant_admin, owner
):
    Membership.objects.filter(user=owner).update(source=MembershipSource.SSO)
    theirs = Membership.objects.get(user=owner)
    client.force_login(tenant_admin)
    response = post(client, tenant.slug, action="remove", membership=theirs.pk)
    assert response.status_code == 400 and "single sign-on group rule" in response.content.decode()
    api = APIClient()
    api.force_authenticate(tenant_admin)
    response = api.patch(
        f"/api/v1/tenants/{tenant.slug}/members/researcher/", {"role": "admin"}, format="json"
    )
    assert response.status_code == 400 and "identity provider" in str(response.json())
    assert role_of(owner, tenant) == Role.MEMBER


def test_a_researcher_asks_to_join_and_an_admin_decides_once(client, tenant, tenant_admin, outsider):
    client.force_login(outsider)
    assert (
        client.post("/account/join/", {"tenant": tenant.slug, "message": "I work on lab X"}).status_code
        == 302
    )
    again = client.post("/account/join/", {"tenant": tenant.slug})
    assert again.status_code == 400 and "already asked to join" in again.content.decode()
    unknown = client.post("/account/join/", {"tenant": "no-such-lab"})
    assert unknown.status_code == 400 and "No tenant with that name." in unknown.content.decode()
    mine = client.post("/account/join/", {"tenant": outsider.memberships.get().tenant.slug})
    assert mine.status_code == 400 and "already a member" in mine.content.decode()
    join = JoinRequest.objects.get()
    assert client.get(f"/tenants/{tenant.slug}/members/").status_code == 404  # not a member yet

    client.force_login(tenant_admin)
    page = client.get(f"/tenants/{tenant.slug}/members/").content.decode()
    assert "I work on lab X" in page
    assert post(client, tenant.slug, action="approve", request=join.pk).status_code == 302
    assert role_of(outsider, tenant) == Role.MEMBER
    late = post(client, tenant.slug, action="decline", request=join.pk)
    assert late.status_code == 400 and "decided meanwhile" in late.content.decode()
    join.refresh_from_db()
    assert (join.state, join.decided_by) == (JoinState.APPROVED, tenant_admin)
    assert not members.decide(join, approve=False, by=tenant_admin)

    client.force_login(outsider)
    assert "Approved" in client.get("/account/join/").content.decode()
