"""Single sign-on through the site's OpenID provider, with authlib's Django client: discovery, the
authorization code flow with PKCE (S256) and a nonce, the ID token checked against the provider's
keys (signature, issuer, audience, expiry, nonce). A sign-in finds its user by issuer and subject,
or makes one from the claims; then the user's e-mail, name and POSIX account follow the claims,
and the group rules (SsoGroupRule) give and take away tenant memberships and platform roles."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import requests
from authlib.integrations.base_client import OAuthError
from authlib.integrations.django_client import OAuth
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.validators import UnicodeUsernameValidator
from django.core.exceptions import ValidationError
from django.core.signals import setting_changed
from django.db import IntegrityError, transaction
from django.dispatch import receiver
from django.utils import timezone
from joserfc.errors import JoseError

from . import audit, roles
from .choices import MembershipSource, PlatformRole
from .models import Identity, Membership, SsoAccount, SsoGroupRule

log = logging.getLogger(__name__)

# The ID token of the sign-in, kept in the session to end the provider's session on logout.
SESSION_ID_TOKEN = "sso_id_token"
# How long a web process keeps the provider's discovery document (its keys are fetched again at
# once when a token names an unknown one).
METADATA_SECONDS = 3600.0


class SignInRefused(Exception):
    """A sign-in the portal refuses: the message is shown to the person; the reason is logged."""


class ProviderUnavailable(Exception):
    """The provider could not be reached, or answered nonsense."""


# Errors of talking to the provider, as opposed to what it said.
NETWORK_ERRORS = (requests.RequestException, ValueError)


def enabled() -> bool:
    return bool(settings.FACTORY_OIDC_ISSUER)


@dataclass
class _Cached:
    key: tuple
    client: object
    made_at: float


_cache: _Cached | None = None
_lock = threading.Lock()


def _settings_key() -> tuple:
    return (
        settings.FACTORY_OIDC_ISSUER,
        settings.FACTORY_OIDC_CLIENT_ID,
        settings.FACTORY_OIDC_CLIENT_SECRET,
        tuple(settings.FACTORY_OIDC_SCOPES),
        settings.FACTORY_OIDC_TIMEOUT,
    )


def client():
    """authlib's client for the provider, its discovery document loaded; ProviderUnavailable if
    the provider cannot be reached or its document names another issuer."""
    global _cache
    key = _settings_key()
    with _lock:
        if _cache is None or _cache.key != key or time.monotonic() - _cache.made_at > METADATA_SECONDS:
            oauth = OAuth()
            oauth.register(
                "provider",
                client_id=settings.FACTORY_OIDC_CLIENT_ID,
                client_secret=settings.FACTORY_OIDC_CLIENT_SECRET,
                server_metadata_url=f"{settings.FACTORY_OIDC_ISSUER}/.well-known/openid-configuration",
                client_kwargs={
                    "scope": " ".join(settings.FACTORY_OIDC_SCOPES),
                    "code_challenge_method": "S256",
                    "default_timeout": settings.FACTORY_OIDC_TIMEOUT,
                },
            )
            _cache = _Cached(key, oauth.create_client("provider"), time.monotonic())
        cached = _cache.client
    try:
        metadata = cached.load_server_metadata()
    except NETWORK_ERRORS as exc:
        raise ProviderUnavailable(f"discovery failed: {exc}") from exc
    # OpenID Connect Discovery 1.0, section 4.3: the document is of the issuer it was asked for.
    if metadata.get("issuer") != settings.FACTORY_OIDC_ISSUER:
        forget_client()
        raise ProviderUnavailable(
            f"the discovery document names issuer {metadata.get('issuer')!r}, "
            f"not {settings.FACTORY_OIDC_ISSUER!r}"
        )
    return cached


def forget_client() -> None:
    global _cache
    with _lock:
        _cache = None


@receiver(setting_changed)
def _settings_changed(setting: str, **kwargs) -> None:
    if setting.startswith("FACTORY_OIDC_"):
        forget_client()


def authorize_redirect(request, redirect_uri: str):
    """The redirect to the provider's sign-in, with a new state, nonce and PKCE verifier kept in
    the session."""
    try:
        return client().authorize_redirect(request, redirect_uri)
    except NETWORK_ERRORS as exc:
        raise ProviderUnavailable(f"authorization request failed: {exc}") from exc


def verified_claims(request) -> tuple[dict, str]:
    """The claims of the person the provider sends back, after exchanging the code (with the PKCE
    verifier) and checking the ID token; merged with what the userinfo endpoint says of the same
    subject. Returns them with the raw ID token."""
    provider = client()
    # OpenID Connect Core 3.1.3.7: the issuer must be the provider's, and the audience must
    # include this client (authlib alone checks the audience only through `azp`).
    claims_options = {
        "iss": {"essential": True, "value": settings.FACTORY_OIDC_ISSUER},
        "aud": {"essential": True, "value": settings.FACTORY_OIDC_CLIENT_ID},
    }
    try:
        token = provider.authorize_access_token(request, claims_options=claims_options)
    except OAuthError as exc:
        if exc.error == "access_denied":
            raise SignInRefused("Sign-in was cancelled at the identity provider.") from exc
        log.warning("single sign-on refused: %s: %s", exc.error, exc.description)
        raise SignInRefused("The identity provider's answer could not be accepted.") from exc
    except JoseError as exc:
        log.warning("single sign-on refused: ID token rejected: %s: %s", type(exc).__name__, exc)
        raise SignInRefused("The identity provider's answer could not be accepted.") from exc
    except NETWORK_ERRORS as exc:
        raise ProviderUnavailable(f"token request failed: {exc}") from exc
    if "userinfo" not in token:
        log.warning("single sign-on refused: the token response has no ID token")
        raise SignInRefused("The identity provider's answer could not be accepted.")
    claims = dict(token["userinfo"])
    if provider.server_metadata.get("userinfo_endpoint"):
        try:
            extra = dict(provider.userinfo(token=token))
        except NETWORK_ERRORS as exc:
            raise ProviderUnavailable(f"userinfo request failed: {exc}") from exc
        if extra.get("sub") != claims["sub"]:
            log.warning(
                "single sign-on refused: userinfo is of subject %r, not %r", extra.get("sub"), claims["sub"]
            )
            raise SignInRefused("The identity provider's answer could not be accepted.")
        claims = {**extra, **claims}  # the signed ID token wins where both say something
    return claims, token["id_token"]


def logout_url(id_token: str, post_logout_redirect_uri: str) -> str | None:
    """Where to send a user whose portal session just ended so that the provider's ends too
    (OpenID Connect RP-Initiated Logout), or None when the provider offers no such endpoint or
    cannot be reached."""
    try:
        provider = client()
        if not provider.server_metadata.get("end_session_endpoint"):
            return None
        return provider.create_logout_url(
            post_logout_redirect_uri=post_logout_redirect_uri,
            id_token_hint=id_token,
            client_id=settings.FACTORY_OIDC_CLIENT_ID,
        )["url"]
    except ProviderUnavailable as exc:
        log.warning("single sign-on logout: provider unavailable (%s); the portal session ended", exc)
        return None


# --- From claims to a user ---------------------------------------------------------------------


def user_for(claims: dict):
    """The portal user the claims are of, made if new, with everything the claims decide brought
    up to date. A second sign-in racing the first to make the user finds it made."""
    try:
        return _user_for(claims)
    except IntegrityError:
        return _user_for(claims)


@transaction.atomic
def _user_for(claims: dict):
    issuer, subject = settings.FACTORY_OIDC_ISSUER, str(claims["sub"])
    account = SsoAccount.objects.select_related("user").filter(issuer=issuer, subject=subject).first()
    if account is None:
        user = _new_user(claims)
        account = SsoAccount.objects.create(user=user, issuer=issuer, subject=subject)
        log.info("single sign-on: made user %s for subject %r", user.username, subject)
    else:
        user = account.user
        if not user.is_active:
            log.warning("single sign-on refused: user %s is deactivated", user.username)
            raise SignInRefused("Your account here is deactivated. Ask a platform admin.")
    with audit.acting(user, via="single sign-on"):  # what the claims change, in the audit trail
        _update_profile(user, claims)
        update_posix_username(user, claims)
        groups = groups_of(claims)
        apply_group_rules(user, groups)
        account.platform_roles = apply_platform_roles(user, groups, account.platform_roles)
    account.groups = groups
    account.last_login_at = timezone.now()
    account.save(update_fields=["groups", "platform_roles", "last_login_at"])
    return user


def _new_user(claims: dict):
    user_model = get_user_model()
    claim = settings.FACTORY_OIDC_USERNAME_CLAIM
    username = claims.get(claim)
    if not isinstance(username, str) or not username:
        log.warning("single sign-on refused: no %r claim for subject %r", claim, claims["sub"])
        raise SignInRefused("The identity provider did not say what your user name is.")
    try:
        UnicodeUsernameValidator()(username)
        if len(username) > user_model._meta.get_field("username").max_length:
            raise ValidationError("too long")
    except ValidationError:
        log.warning(
            "single sign-on refused: user name %r of subject %r is not valid here", username, claims["sub"]
        )
        raise SignInRefused("Your user name at the identity provider cannot be used here.") from None
    # Never taken over by name: that account may be a local one, or another provider's person.
    if user_model.objects.filter(username=username).exists():
        log.warning(
            "single sign-on refused: user name %r of subject %r is already a user here, not linked to it",
            username,
            claims["sub"],
        )
        raise SignInRefused(
            f"An account named {username} already exists here and is not linked to your sign-in. "
            "A platform admin can link it."
        )
    user = user_model(username=username)
    user.set_unusable_password()  # signs in through the provider only
    user.save()
    return user


def _update_profile(user, claims: dict) -> None:
    fields = {
        "email": claims.get("email"),
        "first_name": claims.get("given_name"),
        "last_name": claims.get("family_name"),
    }
    changed = []
    for name, value in fields.items():
        limit = user._meta.get_field(name).max_length
        if isinstance(value, str) and len(value) <= limit and getattr(user, name) != value:
            setattr(user, name, value)
            changed.append(name)
    if changed:
        user.save(update_fields=changed)


def update_posix_username(user, claims: dict) -> None:
    """The POSIX account from the configured claim, checked as one a platform admin sets; a name
    that fails is logged and not stored (the user keeps the one they had)."""
    claim = settings.FACTORY_OIDC_POSIX_CLAIM
    if not claim or claim not in claims:
        return
    value = claims[claim]
    identity = Identity.objects.filter(user=user).first() or Identity(user=user)
    if identity.posix_username == value:
        return
    if not isinstance(value, str):
        log.warning("single sign-on: POSIX user name claim %r of %s is not a string; not stored", claim, user)
        return
    identity.posix_username = value
    try:
        identity.full_clean()
    except ValidationError as exc:
        log.warning(
            "single sign-on: POSIX user name %r of %s refused, not stored: %s",
            value,
            user,
            "; ".join(exc.messages),
        )
        return
    identity.save()
    log.info("single sign-on: %s runs Slurm jobs as %s", user, value)


def groups_of(claims: dict) -> list[str]:
    value = claims.get(settings.FACTORY_OIDC_GROUPS_CLAIM, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        log.warning("single sign-on: groups claim of subject %r is not a list; taken as none", claims["sub"])
        return []
    return sorted({group for group in value if isinstance(group, str)})


def apply_group_rules(user, groups: list[str]) -> None:
    """Memberships as the rules give them for `groups`: made, or given the rules' role, where the
    rules grant one; those the rules made before and no longer grant are removed. Memberships made
    by hand are left as they are."""
    grants = SsoGroupRule.objects.grants(groups)
    existing = {m.tenant_id: m for m in Membership.objects.filter(user=user).select_related("tenant")}
    for tenant_id, role in grants.items():
        membership = existing.get(tenant_id)
        if membership is None:
            membership = Membership.objects.create(
                user=user, tenant_id=tenant_id, role=role, source=MembershipSource.SSO
            )
            log.info("single sign-on: %s joins %s as %s", user, membership.tenant, role)
        elif membership.source == MembershipSource.SSO and membership.role != role:
            membership.role = role
            membership.save(update_fields=["role"])
            log.info("single sign-on: %s is now %s of %s", user, role, membership.tenant)
    for tenant_id, membership in existing.items():
        if membership.source == MembershipSource.SSO and tenant_id not in grants:
            membership.delete()
            log.info("single sign-on: %s leaves %s (no group grants it any more)", user, membership.tenant)


def apply_platform_roles(user, groups: list[str], given_before: list[str]) -> list[str]:
    """Platform roles as the rules give them for `groups`: granted where a rule gives one; those
    the rules gave before (`given_before`) and give no more are taken away. A role given by hand
    is left as it is. Returns the roles the rules are now answerable for."""
    from django.contrib.auth.models import Group

    wanted = SsoGroupRule.objects.platform_roles(groups)
    held = set(user.groups.filter(name__in=PlatformRole.values).values_list("name", flat=True))
    added = wanted - held
    removed = (set(given_before) & held) - wanted
    if added:
        user.groups.add(*(roles.group_of(role) for role in sorted(added)))
        log.info("single sign-on: %s is now %s", user, ", ".join(sorted(added)))
    if removed:
        user.groups.remove(*Group.objects.filter(name__in=removed))
        log.info("single sign-on: %s is no longer %s (no group gives it)", user, ", ".join(sorted(removed)))
    roles.forget_permissions(user)
    return sorted((set(given_before) & wanted) | added)
