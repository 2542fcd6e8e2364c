"""Failed sign-ins lock an account out from the address they came from, on the login page, the
admin's login and the API token endpoint alike: others behind that address, and the account from
elsewhere, still sign in."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.test import Client
from rest_framework.test import APIClient

from factory import roles
from factory.choices import PlatformRole
from tests.conftest import make_user

pytestmark = pytest.mark.django_db

LOCKED = "Too many failed sign-ins"
LAB = "10.1.0.7"  # one address for a whole lab, as behind a NAT
HOME = "192.0.2.50"


@pytest.fixture
def staff(django_user_model):
    user = make_user(django_user_model, "opsadmin")
    roles.grant(user, PlatformRole.PLATFORM_ADMIN)
    return user


def page_sign_in(path: str, username: str, password: str, address: str):
    return Client().post(path, {"username": username, "password": password}, REMOTE_ADDR=address)


def token_sign_in(username: str, password: str, address: str):
    return APIClient().post(
        "/api/v1/auth/token/", {"username": username, "password": password}, REMOTE_ADDR=address
    )


def signed_in(path: str, response) -> bool:
    if path == "/api/v1/auth/token/":
        return response.status_code == 200 and "token" in response.json()
    return response.status_code == 302 and "/login/" not in response["Location"]


def sign_in(path: str, username: str, password: str, address: str):
    if path == "/api/v1/auth/token/":
        return token_sign_in(username, password, address)
    return page_sign_in(path, username, password, address)


@pytest.mark.parametrize("path", ["/login/", "/admin/login/", "/api/v1/auth/token/"])
def test_failed_sign_ins_lock_the_account_out_from_that_address_only(path, platform_admin, staff):
    victim, neighbour = "platform", "opsadmin"  # platform admins, so that the admin's login lets them in
    limit = settings.AXES_FAILURE_LIMIT
    for _ in range(limit - 1):
        response = sign_in(path, victim, "guess", LAB)
        assert response.status_code in (200, 400) and LOCKED not in response.content.decode()

    locked = sign_in(path, victim, "guess", LAB)
    assert locked.status_code == 429
    assert LOCKED in locked.content.decode()
    assert int(locked["Retry-After"]) == settings.AXES_COOLOFF_TIME.total_seconds()

    # Even the right password, from that address, until the lockout ends.
    again = sign_in(path, victim, "pw-platform", LAB)
    assert again.status_code == 429 and LOCKED in again.content.decode()
    # Another user behind the same address signs in; so does the account from elsewhere.
    assert signed_in(path, sign_in(path, neighbour, "pw-opsadmin", LAB))
    assert signed_in(path, sign_in(path, victim, "pw-platform", HOME))


def test_the_lockout_page_is_a_page_of_the_portal(owner):
    for _ in range(settings.AXES_FAILURE_LIMIT):
        response = page_sign_in("/login/", "researcher", "guess", LAB)
    assert response.status_code == 429
    page = response.content.decode()
    assert "<h1>Sign-in locked</h1>" in page and 'href="/login/"' in page
    assert settings.AXES_COOLOFF_MESSAGE in page


def test_a_successful_sign_in_starts_the_count_again(owner):
    for _ in range(2):
        for _ in range(settings.AXES_FAILURE_LIMIT - 1):
            assert token_sign_in("researcher", "guess", LAB).status_code == 400
        assert token_sign_in("researcher", "pw-researcher", LAB).status_code == 200


def test_failures_on_one_path_count_on_the_others(owner):
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        page_sign_in("/login/", "researcher", "guess", LAB)
    assert token_sign_in("researcher", "guess", LAB).status_code == 429
    assert page_sign_in("/login/", "researcher", "pw-researcher", LAB).status_code == 429


def test_a_forwarded_for_header_does_not_change_the_address(owner):
    for number in range(settings.AXES_FAILURE_LIMIT):
        response = APIClient().post(
            "/api/v1/auth/token/",
            {"username": "researcher", "password": "guess"},
            REMOTE_ADDR=LAB,
            HTTP_X_FORWARDED_FOR=f"198.51.100.{number}",
        )
    assert response.status_code == 429


def test_a_username_longer_than_any_is_a_field_error(db):
    response = token_sign_in("u" * 300, "guess", LAB)
    assert response.status_code == 400 and "username" in response.json()
