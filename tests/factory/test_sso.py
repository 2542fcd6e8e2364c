"""Single sign-on through a real OpenID provider (node's oidc-provider, started per test): users made
from claims, their POSIX account from a claim, group rules giving and taking tenant memberships at
every sign-in, bad ID tokens refused, a provider that is down, logout at the provider too."""

from __future__ import annotations

import logging
import time
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from auditlog.models import LogEntry
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.test import Client

from factory import roles
from factory.choices import MembershipSource, PlatformRole, Role
from factory.models import Identity, Membership, SsoAccount, SsoGroupRule, Tenant
from tests.conftest import make_user
from tests.oidc.server import ALICE, BOB, CLIENT_ID, free_port, sign_in_at_provider, signing_key
from tests.support import trail

pytestmark = pytest.mark.django_db

PORTAL = "http://testserver"
REFUSED = "answer could not be accepted"
UNAVAILABLE = "The identity provider cannot be reached just now"


def start_sign_in(client: Client, next_url: str = "") -> str:
    response = client.get("/oidc/login/" + (f"?next={next_url}" if next_url else ""))
    assert response.status_code == 302, response.content
    return response["Location"]


def callback(client: Client, back: str):
    parts = urlsplit(back)
    return client.get(f"{parts.path}?{parts.query}")


def sso_sign_in(client: Client, sub: str, *, browser: requests.Session | None = None, next_url: str = ""):
    """A person signs in through the provider; returns the portal's answer to the callback."""
    back = sign_in_at_provider(start_sign_in(client, next_url), sub, PORTAL, browser)
    return callback(client, back)


def signed_in_as(client: Client) -> str | None:
    user_id = client.session.get("_auth_user_id")
    return get_user_model().objects.get(pk=user_id).username if user_id else None


@pytest.fixture
def lab_x(db) -> Tenant:
    return Tenant.objects.create(slug="lab-x", name="Lab X")


@pytest.fixture
def lab_y(db) -> Tenant:
    return Tenant.objects.create(slug="lab-y", name="Lab Y")


@pytest.fixture
def rules(lab_x, lab_y):
    """gpu-lab-x-admins → admin of lab-x; any gpu-<slug>-users → member of that tenant."""
    return [
        SsoGroupRule.objects.create(group="gpu-lab-x-admins", tenant=lab_x, role=Role.ADMIN),
        SsoGroupRule.objects.create(
            group=r"gpu-(?P<tenant>[a-z0-9-]+)-users", is_pattern=True, role=Role.MEMBER
        ),
    ]


def memberships(username: str) -> dict[str, tuple[str, str]]:
    return {
        m.tenant.slug: (m.role, m.source)
        for m in Membership.objects.filter(user__username=username).select_related("tenant")
    }


# --- Signing in ----------------------------------------------------------------------------------


def test_first_sign_in_makes_the_user_from_the_claims(oidc_provider, client):
    response = sso_sign_in(client, ALICE, next_url="/account/tokens/")
    assert response.status_code == 302 and response["Location"] == "/account/tokens/"
    assert signed_in_as(client) == "alice"
    alice = get_user_model().objects.get(username="alice")
    assert (alice.email, alice.first_name, alice.last_name) == ("alice@lab-x.example.org", "Alice", "Liddell")
    assert not alice.has_usable_password() and not alice.is_staff
    account = SsoAccount.objects.get(user=alice)
    assert (account.issuer, account.subject) == (oidc_provider.issuer, ALICE)
    assert account.groups == ["gpu-lab-x-admins", "staff"]
    # The POSIX claim is the account Slurm runs alice's jobs as.
    assert Identity.objects.posix_username(alice.pk) == "aif-alice"
    assert client.get("/account/tokens/").status_code == 200


def test_a_next_page_elsewhere_is_not_followed(oidc_provider, client):
    response = sso_sign_in(client, ALICE, next_url="https://evil.example.org/")
    assert response.status_code == 302 and response["Location"] == "/jobs/"


def test_the_login_page_offers_single_sign_on_and_keeps_the_local_form(oidc_provider, client):
    page = client.get("/login/?next=/clusters/").content.decode()
    assert 'href="/oidc/login/?next=/clusters/"' in page and settings.FACTORY_OIDC_LABEL in page
    assert 'name="password"' in page


def test_without_an_issuer_the_login_page_is_the_local_form_only(client, settings):
    settings.FACTORY_OIDC_ISSUER = ""
    page = client.get("/login/").content.decode()
    assert "/oidc/login/" not in page and 'name="password"' in page
    assert client.get("/oidc/login/").status_code == 404
    assert client.get("/oidc/callback/?code=x&state=y").status_code == 404


def test_the_authorization_request_uses_pkce_and_a_nonce(oidc_provider, client):
    query = parse_qs(urlsplit(start_sign_in(client)).query)
    assert query["code_challenge_method"] == ["S256"] and len(query["code_challenge"][0]) >= 43
    assert query["nonce"][0] and query["state"][0]
    assert query["client_id"] == [CLIENT_ID] and query["redirect_uri"] == [f"{PORTAL}/oidc/callback/"]
    assert query["scope"][0].split() == ["openid", "profile", "email", "groups", "posix"]


def test_a_later_sign_in_finds_the_user_by_subject_even_under_a_new_name(oidc_provider, client):
    sso_sign_in(client, ALICE)
    oidc_provider.set_claim(ALICE, "preferred_username", "alice.liddell")
    oidc_provider.set_claim(ALICE, "email", "a.liddell@lab-x.example.org")
    again = Client()
    assert sso_sign_in(again, ALICE).status_code == 302
    assert signed_in_as(again) == "alice"
    assert get_user_model().objects.get(username="alice").email == "a.liddell@lab-x.example.org"
    assert SsoAccount.objects.count() == 1 and get_user_model().objects.count() == 1


def test_a_local_account_with_the_same_name_is_never_taken_over(
    oidc_provider, client, django_user_model, caplog
):
    local = make_user(django_user_model, "alice", is_staff=True)
    with caplog.at_level(logging.WARNING, logger="factory.sso"):
        response = sso_sign_in(client, ALICE)
    assert response.status_code == 403
    assert "An account named alice already exists here" in response.content.decode()
    assert signed_in_as(client) is None
    assert not SsoAccount.objects.exists()
    assert "already a user here, not linked" in caplog.text
    # Once a platform admin links the account, the person signs in as it.
    SsoAccount.objects.create(user=local, issuer=oidc_provider.issuer, subject=ALICE)
    assert sso_sign_in(Client(), ALICE).status_code == 302


def test_a_deactivated_user_cannot_sign_in(oidc_provider, client):
    sso_sign_in(client, ALICE)
    get_user_model().objects.filter(username="alice").update(is_active=False)
    fresh = Client()
    response = sso_sign_in(fresh, ALICE)
    assert response.status_code == 403 and signed_in_as(fresh) is None


def test_cancelling_at_the_provider_signs_nobody_in(oidc_provider, client):
    authorize = start_sign_in(client)
    state = parse_qs(urlsplit(authorize).query)["state"][0]
    response = client.get(f"/oidc/callback/?error=access_denied&state={state}")
    assert response.status_code == 403 and "cancelled" in response.content.decode()
    assert signed_in_as(client) is None


def test_a_callback_the_portal_did_not_start_is_refused(oidc_provider, client, caplog):
    # A code obtained in one browser, replayed in another (login CSRF): that browser's session
    # holds no such state.
    back = sign_in_at_provider(start_sign_in(Client()), ALICE, PORTAL)
    with caplog.at_level(logging.WARNING, logger="factory.sso"):
        response = callback(client, back)
    assert response.status_code == 403 and REFUSED in response.content.decode()
    assert signed_in_as(client) is None and "mismatching_state" in caplog.text


# --- The POSIX account ---------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["root", "Alice", "aif-alice\n", " aif-alice", "$(id)", "x" * 33, 7])
def test_a_bad_posix_name_from_the_provider_is_refused_and_not_stored(oidc_provider, client, caplog, bad):
    oidc_provider.set_claim(ALICE, "posix_username", bad)
    with caplog.at_level(logging.WARNING, logger="factory.sso"):
        response = sso_sign_in(client, ALICE)
    assert response.status_code == 302 and signed_in_as(client) == "alice"  # signed in all the same
    assert not Identity.objects.exclude(posix_username="").exists()
    assert "of alice refused, not stored" in caplog.text or "is not a string; not stored" in caplog.text


def test_another_users_posix_account_is_refused_and_the_old_one_kept(oidc_provider, client, owner, caplog):
    # researcher runs jobs as aif-alice already: alice's claim to it is refused.
    with caplog.at_level(logging.WARNING, logger="factory.sso"):
        sso_sign_in(client, ALICE)
    assert "POSIX user name 'aif-alice' of alice refused" in caplog.text
    assert dict(Identity.objects.values_list("user__username", "posix_username")) == {
        "researcher": "aif-alice"
    }
    oidc_provider.set_claim(ALICE, "posix_username", "aif-alice2")
    sso_sign_in(Client(), ALICE)
    oidc_provider.set_claim(ALICE, "posix_username", "aif-alice")
    sso_sign_in(Client(), ALICE)
    assert dict(Identity.objects.values_list("user__username", "posix_username")) == {
        "alice": "aif-alice2",
        "researcher": "aif-alice",
    }


def test_a_changed_posix_claim_changes_the_account_jobs_run_as(oidc_provider, client):
    sso_sign_in(client, ALICE)
    oidc_provider.set_claim(ALICE, "posix_username", "aif-alice2")
    sso_sign_in(Client(), ALICE)
    assert Identity.objects.get(user__username="alice").posix_username == "aif-alice2"


# --- Group rules ---------------------------------------------------------------------------------


def test_group_rules_give_memberships_and_roles_at_sign_in(oidc_provider, rules, client):
    sso_sign_in(client, ALICE)
    sso_sign_in(Client(), BOB)
    assert memberships("alice") == {"lab-x": (Role.ADMIN, MembershipSource.SSO)}
    assert memberships("bob") == {"lab-y": (Role.MEMBER, MembershipSource.SSO)}
    assert client.get("/api/v1/tenants/lab-x/").status_code == 200


def test_the_most_powerful_role_of_several_rules_wins(oidc_provider, rules, client):
    oidc_provider.set_groups(ALICE, ["gpu-lab-x-users", "gpu-lab-x-admins"])
    sso_sign_in(client, ALICE)
    assert memberships("alice") == {"lab-x": (Role.ADMIN, MembershipSource.SSO)}


def test_a_pattern_naming_no_tenant_grants_nothing(oidc_provider, rules, client):
    oidc_provider.set_groups(ALICE, ["gpu-nowhere-users", "gpu-LAB-X-users"])
    sso_sign_in(client, ALICE)
    assert memberships("alice") == {}


def test_leaving_a_group_takes_access_away_at_the_next_sign_in(
    oidc_provider, rules, client, tenant, make_job
):
    SsoGroupRule.objects.create(group="gpu-demo-users", tenant=tenant, role=Role.MEMBER)
    oidc_provider.set_groups(ALICE, ["gpu-lab-x-admins", "gpu-demo-users"])
    job = make_job()  # demo-lab's
    sso_sign_in(client, ALICE)
    assert set(memberships("alice")) == {"lab-x", "demo-lab"}
    page = client.get(f"/jobs/{job.pk}/")
    assert page.status_code == 200, page.content.decode()[:3000]

    # Removed from demo's group, and made a plain member of lab-x, at the provider.
    oidc_provider.set_groups(ALICE, ["gpu-lab-x-users"])
    later = Client()
    sso_sign_in(later, ALICE)
    assert memberships("alice") == {"lab-x": (Role.MEMBER, MembershipSource.SSO)}
    assert later.get(f"/jobs/{job.pk}/").status_code == 404
    assert later.get("/api/v1/tenants/demo-lab/").status_code == 404

    oidc_provider.set_groups(ALICE, [])
    sso_sign_in(Client(), ALICE)
    assert memberships("alice") == {}


def test_memberships_made_by_hand_are_left_alone(oidc_provider, rules, client, lab_x, lab_y):
    sso_sign_in(client, ALICE)
    alice = get_user_model().objects.get(username="alice")
    Membership.objects.create(user=alice, tenant=lab_y, role=Role.ADMIN)  # by a platform admin
    Membership.objects.filter(user=alice, tenant=lab_x).update(
        source=MembershipSource.MANUAL, role=Role.MEMBER
    )
    oidc_provider.set_groups(ALICE, [])
    sso_sign_in(Client(), ALICE)
    assert memberships("alice") == {
        "lab-x": (Role.MEMBER, MembershipSource.MANUAL),
        "lab-y": (Role.ADMIN, MembershipSource.MANUAL),
    }


def test_group_rules_give_and_take_away_platform_roles(oidc_provider, rules, client, other_tenant):
    SsoGroupRule.objects.create(group="gpu-auditors", platform_role=PlatformRole.AUDITOR)
    SsoGroupRule.objects.create(group="finance-.*", is_pattern=True, platform_role=PlatformRole.FINANCE)
    oidc_provider.set_groups(ALICE, ["gpu-auditors", "finance-emea", "gpu-lab-x-users"])
    sso_sign_in(client, ALICE)
    alice = get_user_model().objects.get(username="alice")
    assert roles.platform_roles(alice) == ["finance", "auditor"]
    assert client.get("/api/v1/tenants/other-lab/").status_code == 200  # an auditor reads every tenant
    assert client.get("/api/v1/reports/chargeback/").status_code == 200
    # A role a platform admin gave by hand stays; those the groups gave go with the groups.
    roles.grant(alice, PlatformRole.PLATFORM_ADMIN)
    oidc_provider.set_groups(ALICE, ["gpu-lab-x-users"])
    later = Client()
    sso_sign_in(later, ALICE)
    assert roles.platform_roles(get_user_model().objects.get(username="alice")) == ["platform-admin"]
    assert memberships("alice") == {"lab-x": (Role.MEMBER, MembershipSource.SSO)}
    # The trail says what the sign-in changed.
    removed = [e for e in trail(get_user_model()) if e.changes.get("groups", {}).get("operation") == "delete"]
    assert removed and set(removed[-1].changes["groups"]["objects"]) == {"finance", "auditor"}
    assert (removed[-1].actor, removed[-1].additional_data) == (alice, {"via": "single sign-on"})
    joined = trail(Membership, action=LogEntry.Action.CREATE).get()
    assert joined.additional_data == {"source": "sso", "via": "single sign-on"}


def test_a_platform_role_rule_names_no_tenant(lab_x):
    with pytest.raises(ValidationError, match="not both"):
        SsoGroupRule(group="gpu-auditors", tenant=lab_x, platform_role=PlatformRole.AUDITOR).full_clean()
    with pytest.raises(ValidationError, match="captures no tenant"):
        SsoGroupRule(
            group="gpu-(?P<tenant>[a-z-]+)-auditors", is_pattern=True, platform_role=PlatformRole.AUDITOR
        ).full_clean()
    SsoGroupRule(group="gpu-auditors", platform_role=PlatformRole.AUDITOR).full_clean()


def test_a_rule_is_checked_before_it_is_saved(lab_x):
    with pytest.raises(ValidationError, match="Not a regular expression"):
        SsoGroupRule(group="gpu-(", is_pattern=True, tenant=lab_x).full_clean()
    with pytest.raises(ValidationError, match="capture its slug"):
        SsoGroupRule(group="gpu-.*", is_pattern=True).full_clean()
    with pytest.raises(ValidationError, match="leave this empty"):
        SsoGroupRule(group="gpu-(?P<tenant>.*)", is_pattern=True, tenant=lab_x).full_clean()
    with pytest.raises(ValidationError, match="Name the tenant"):
        SsoGroupRule(group="gpu-lab-x").full_clean()
    SsoGroupRule(group="gpu-(?P<tenant>[a-z-]+)-users", is_pattern=True).full_clean()


def test_platform_admin_edits_group_rules_in_the_admin(platform_admin, lab_x):
    platform_admin.is_superuser = True
    platform_admin.save()
    client = Client()
    client.force_login(platform_admin)
    bad = client.post(
        "/admin/factory/ssogrouprule/add/", {"group": "gpu-(", "is_pattern": "on", "role": "member"}
    )
    assert bad.status_code == 200 and "Not a regular expression" in bad.content.decode()
    good = client.post(
        "/admin/factory/ssogrouprule/add/", {"group": "gpu-lab-x-admins", "tenant": lab_x.pk, "role": "admin"}
    )
    assert good.status_code == 302
    assert SsoGroupRule.objects.get().tenant == lab_x


# --- Bad ID tokens -------------------------------------------------------------------------------


def test_an_id_token_resigned_with_the_providers_key_is_accepted(oidc_proxy, client):
    """The proxy itself breaks nothing: the same claims, signed again, sign in."""
    provider, proxy = oidc_proxy
    proxy.replace_id_token = provider.sign
    assert sso_sign_in(client, ALICE).status_code == 302
    assert signed_in_as(client) == "alice"


def tampered(provider, **changes):
    def replace(claims: dict) -> str:
        return provider.sign({**claims, **changes})

    return replace


# Each case: how the token is made of the real one's claims, and the reason logged.
BAD_TOKENS = {
    "wrong audience": (lambda p: tampered(p, aud="another-client"), "Invalid claim: 'aud'"),
    "wrong audience, our client as azp": (
        lambda p: tampered(p, aud="another-client", azp=CLIENT_ID),
        "Invalid claim: 'aud'",
    ),
    "wrong issuer": (lambda p: tampered(p, iss="https://idp.example.org"), "Invalid claim: 'iss'"),
    "wrong nonce": (lambda p: tampered(p, nonce="not-the-one-sent"), "Invalid claim: 'nonce'"),
    "expired": (
        lambda p: tampered(p, iat=int(time.time()) - 7200, exp=int(time.time()) - 3600),
        "The token is expired",
    ),
    # Another key under the provider's key id: the signature does not verify.
    "wrong signature": (lambda p: lambda claims: p.sign(claims, key=signing_key(p.key.kid)), "bad_signature"),
    "unknown key": (lambda p: lambda claims: p.sign(claims, key=signing_key()), "No key for kid"),
}


@pytest.mark.parametrize("case", BAD_TOKENS)
def test_a_bad_id_token_is_refused_with_a_log_line_and_no_session(oidc_proxy, client, caplog, case):
    provider, proxy = oidc_proxy
    make, reason = BAD_TOKENS[case]
    proxy.replace_id_token = make(provider)
    with caplog.at_level(logging.WARNING, logger="factory.sso"):
        response = sso_sign_in(client, ALICE)
    assert response.status_code == 403 and REFUSED in response.content.decode()
    assert signed_in_as(client) is None
    assert not get_user_model().objects.filter(username="alice").exists()
    assert "single sign-on refused: ID token rejected" in caplog.text and reason in caplog.text
    assert client.get("/jobs/").status_code == 302  # to the login page


# --- A provider that is down ---------------------------------------------------------------------


def test_an_unreachable_provider_shows_a_clear_page_and_local_login_still_works(
    client, settings, platform_admin, caplog
):
    settings.FACTORY_OIDC_ISSUER = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    settings.FACTORY_OIDC_CLIENT_ID = CLIENT_ID
    assert 'href="/oidc/login/' in client.get("/login/").content.decode()  # the page never waits on it
    with caplog.at_level(logging.ERROR, logger="factory.views"):
        response = client.get("/oidc/login/")
    assert response.status_code == 503
    page = response.content.decode()
    assert UNAVAILABLE in page and 'href="/login/"' in page and "Traceback" not in page
    assert "identity provider unavailable" in caplog.text

    local = client.post("/login/", {"username": "platform", "password": "pw-platform"})
    assert local.status_code == 302 and local["Location"] == "/jobs/"
    assert signed_in_as(client) == "platform"


def test_a_provider_that_goes_down_mid_sign_in_shows_the_same_page(own_oidc_provider, client):
    back = sign_in_at_provider(start_sign_in(client), ALICE, PORTAL)
    own_oidc_provider.stop()  # killed between the sign-in and the code exchange
    response = callback(client, back)
    assert response.status_code == 503 and UNAVAILABLE in response.content.decode()
    assert signed_in_as(client) is None


# --- Local sign-in beside it ---------------------------------------------------------------------


def test_local_sign_in_is_still_locked_out_after_failures(oidc_provider, platform_admin):
    lab = "10.1.0.7"
    for _ in range(settings.AXES_FAILURE_LIMIT):
        response = Client().post("/login/", {"username": "platform", "password": "guess"}, REMOTE_ADDR=lab)
    assert response.status_code == 429
    again = Client().post("/login/", {"username": "platform", "password": "pw-platform"}, REMOTE_ADDR=lab)
    assert again.status_code == 429


def test_a_single_sign_on_user_has_no_local_password(oidc_provider, client):
    sso_sign_in(client, ALICE)
    for password in ("", "any", "!"):
        refused = Client().post("/login/", {"username": "alice", "password": password})
        assert refused.status_code == 200 and signed_in_as(client) == "alice"
    assert Client().post("/api/v1/auth/token/", {"username": "alice", "password": "!"}).status_code == 400


# --- Logging out ---------------------------------------------------------------------------------


def test_logout_ends_the_provider_session_too(oidc_provider, client):
    browser = requests.Session()
    sso_sign_in(client, ALICE, browser=browser)
    response = client.post("/logout/")
    assert signed_in_as(client) is None
    end = urlsplit(response["Location"])
    assert f"{end.scheme}://{end.netloc}{end.path}" == f"{oidc_provider.issuer}/session/end"
    query = parse_qs(end.query)
    assert query["post_logout_redirect_uri"] == [f"{PORTAL}/login/"] and query["client_id"] == [CLIENT_ID]
    assert query["id_token_hint"][0].count(".") == 2

    # At the provider: confirm, and be sent back to the portal's login page.
    confirm = browser.get(response["Location"], timeout=10)
    assert confirm.status_code == 200 and 'name="logout"' in confirm.text
    action = confirm.text.split('action="', 1)[1].split('"', 1)[0]
    xsrf = confirm.text.split('name="xsrf" value="', 1)[1].split('"', 1)[0]
    done = browser.post(
        requests.compat.urljoin(confirm.url, action),
        data={"xsrf": xsrf, "logout": "yes"},
        allow_redirects=False,
        timeout=10,
    )
    assert done.status_code in (302, 303) and done.headers["Location"].startswith(f"{PORTAL}/login/")
    # The provider asks for the login again: its session ended.
    fresh = browser.get(start_sign_in(Client()), timeout=10)
    assert 'name="login"' in fresh.text


def test_logout_of_a_local_user_goes_to_the_login_page(oidc_provider, client, platform_admin):
    client.force_login(platform_admin)
    response = client.post("/logout/")
    assert response.status_code == 302 and response["Location"] == "/login/"
    assert signed_in_as(client) is None
    assert client.get("/logout/").status_code == 405


def test_without_an_end_session_endpoint_logout_ends_the_portal_session_only(tmp_path, settings):
    from tests.conftest import use_provider
    from tests.oidc.server import OidcProvider

    provider = OidcProvider(tmp_path, portal_url=PORTAL, rp_initiated_logout=False)
    provider.start()
    try:
        use_provider(settings, provider)
        discovery = requests.get(f"{provider.issuer}/.well-known/openid-configuration", timeout=10).json()
        assert "end_session_endpoint" not in discovery
        client = Client()
        assert sso_sign_in(client, ALICE).status_code == 302
        response = client.post("/logout/")
        assert response.status_code == 302 and response["Location"] == "/login/"
        assert signed_in_as(client) is None
    finally:
        provider.stop()
