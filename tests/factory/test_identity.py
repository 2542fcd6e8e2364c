"""A user's POSIX account, which their Slurm jobs run as: set by platform admins, in the Django admin
or through a tenant's members in the API; names are checked whole and never trimmed."""

from __future__ import annotations

import pytest

from factory.models import Identity, Membership
from tests.conftest import make_user
from tests.jobs.test_api import client_for

pytestmark = pytest.mark.django_db

MEMBERS = "/api/v1/tenants/demo-lab/members/"

HOSTILE_NAMES = [
    "aif\nalice",
    "aif-alice\n",
    " aif-alice",
    "$(touch /tmp/aif-pwned)",
    "aif;id",
    "a\x00b",
    "ålice",
    "Alice",
    "-u root",
    "x" * 33,
    "a" * (1 << 16),  # long, yet within what a signed-in request may send (DATA_UPLOAD_MAX_MEMORY_SIZE)
    "root",
]


def posix_accounts() -> dict[str, str]:
    return dict(Identity.objects.values_list("user__username", "posix_username"))


@pytest.fixture
def newcomer(django_user_model):
    return make_user(django_user_model, "newcomer")


def test_platform_admin_sets_changes_and_clears_a_posix_account_through_the_members_api(
    platform_admin, owner, newcomer
):
    api = client_for(platform_admin)
    added = api.post(MEMBERS, {"username": "newcomer", "posix_username": "aif-carol"}, format="json")
    assert added.status_code == 201, added.content
    assert added.json()["posix_username"] == "aif-carol"
    listing = {m["username"]: m["posix_username"] for m in api.get(MEMBERS).json()["results"]}
    assert listing == {"newcomer": "aif-carol", "researcher": "aif-alice"}

    changed = api.patch(f"{MEMBERS}newcomer/", {"posix_username": "aif-dave"}, format="json")
    assert changed.status_code == 200 and changed.json()["posix_username"] == "aif-dave"
    assert api.patch(f"{MEMBERS}newcomer/", {"role": "admin"}, format="json").json()["posix_username"] == (
        "aif-dave"
    )
    cleared = api.patch(f"{MEMBERS}newcomer/", {"posix_username": ""}, format="json")
    assert cleared.status_code == 200 and cleared.json()["posix_username"] == ""
    assert posix_accounts() == {"newcomer": "", "researcher": "aif-alice"}


def test_a_tenant_admin_cannot_set_posix_accounts(tenant_admin, owner, newcomer):
    api = client_for(tenant_admin)
    refused = api.patch(f"{MEMBERS}researcher/", {"posix_username": "aif-bob"}, format="json")
    assert refused.status_code == 403
    adding = api.post(MEMBERS, {"username": "newcomer", "posix_username": "aif-bob"}, format="json")
    assert adding.status_code == 403
    assert posix_accounts() == {"researcher": "aif-alice"}
    assert not Membership.objects.filter(user=newcomer).exists()
    assert api.post(MEMBERS, {"username": "newcomer"}, format="json").status_code == 201


def test_one_posix_account_belongs_to_one_user(platform_admin, owner, teammate):
    response = client_for(platform_admin).patch(
        f"{MEMBERS}teammate/", {"posix_username": "aif-alice"}, format="json"
    )
    assert response.status_code == 400 and "another user's" in response.json()["posix_username"][0]
    assert posix_accounts() == {"researcher": "aif-alice"}


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=range(len(HOSTILE_NAMES)))
def test_hostile_posix_usernames_get_a_field_error_in_the_api_and_change_nothing(
    platform_admin, owner, newcomer, name
):
    api = client_for(platform_admin)
    added = api.post(MEMBERS, {"username": "newcomer", "posix_username": name}, format="json")
    assert added.status_code == 400 and list(added.json()) == ["posix_username"]
    changed = api.patch(f"{MEMBERS}researcher/", {"posix_username": name}, format="json")
    assert changed.status_code == 400 and list(changed.json()) == ["posix_username"]
    assert not Membership.objects.filter(user=newcomer).exists()
    assert posix_accounts() == {"researcher": "aif-alice"}


@pytest.fixture
def admin_client(client, platform_admin):
    platform_admin.is_superuser = True
    platform_admin.save()
    client.force_login(platform_admin)
    return client


def test_platform_admin_sets_a_posix_account_in_the_admin(admin_client, newcomer):
    assert admin_client.get("/admin/factory/identity/").status_code == 200
    response = admin_client.post(
        "/admin/factory/identity/add/", {"user": newcomer.pk, "posix_username": "aif-carol"}
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    assert posix_accounts() == {"newcomer": "aif-carol"}


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=range(len(HOSTILE_NAMES)))
def test_hostile_posix_usernames_get_a_field_error_in_the_admin_and_create_nothing(
    admin_client, newcomer, name
):
    response = admin_client.post(
        "/admin/factory/identity/add/", {"user": newcomer.pk, "posix_username": name}
    )
    assert response.status_code == 200
    assert "posix_username" in response.context["adminform"].form.errors
    assert not Identity.objects.exists()
