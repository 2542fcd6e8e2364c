"""A researcher signs in through the site's identity provider in headless Chromium, lands in the
tenant their group gives them, and logs out of both."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from factory.choices import Role
from factory.models import SsoGroupRule
from tests.oidc.server import ALICE

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def sign_in_at_provider(page: Page, sub: str) -> None:
    """The provider's development login form."""
    page.get_by_placeholder("Enter any login").fill(sub)
    page.get_by_placeholder("and password").fill("any")
    page.get_by_role("button", name="Sign-in").click()


def test_researcher_signs_in_through_the_identity_provider_and_logs_out_of_both(
    page: Page, asgi_server, browser_oidc_provider, tenant, make_job
):
    SsoGroupRule.objects.create(group="gpu-lab-x-admins", tenant=tenant, role=Role.ADMIN)
    job = make_job(name="lab-job")  # demo-lab's, another member's

    page.goto(f"{asgi_server}/jobs/{job.pk}/")
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    page.get_by_role("link", name="Sign in with your institution").click()
    expect(page).to_have_url(re.compile(rf"^{re.escape(browser_oidc_provider.issuer)}/"))
    sign_in_at_provider(page, ALICE)

    # Back in the portal, on the page first asked for: the group made alice an admin of demo-lab.
    expect(page.get_by_role("heading", name="lab-job")).to_be_visible()
    expect(page.locator(".whoami")).to_contain_text("alice")
    assert tenant.memberships.get(user__username="alice").role == Role.ADMIN

    page.get_by_role("button", name="Log out").click()
    page.get_by_role("button", name="Yes, sign me out").click()
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    assert page.url.startswith(f"{asgi_server}/login/")
    page.goto(f"{asgi_server}/jobs/")
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()

    # The provider's session ended too: it asks who you are again.
    page.get_by_role("link", name="Sign in with your institution").click()
    expect(page.get_by_placeholder("Enter any login")).to_be_visible()


def test_with_the_provider_down_a_break_glass_admin_still_logs_in(
    page: Page, asgi_server, settings, platform_admin
):
    from tests.oidc.server import CLIENT_ID, free_port

    settings.FACTORY_OIDC_ISSUER = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    settings.FACTORY_OIDC_CLIENT_ID = CLIENT_ID
    page.goto(f"{asgi_server}/login/")
    page.get_by_role("link", name="Sign in with your institution").click()
    expect(page.get_by_role("heading", name="Single sign-on failed")).to_be_visible()
    expect(page.get_by_role("alert")).to_contain_text("cannot be reached just now")
    page.get_by_role("link", name="Back to the login page").click()
    page.get_by_label("Username").fill("platform")
    page.get_by_label("Password").fill("pw-platform")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Jobs")).to_be_visible()
