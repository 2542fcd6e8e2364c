"""API tokens (`Authorization: Token <token>`), found by their digest, their users remembered
briefly per process.

Every API request authenticates, and the token look-up (token joined to its user) is one of the
few database queries a job submission makes. A token's user, with their permissions, is
remembered for FACTORY_TOKEN_CACHE_SECONDS (default 10; 0 turns it off), never past the token's
expiry, in the process that looked it up, keyed by the token's digest (the process keeps no token
either). Revoking (deleting) a token, saving or deleting its user (deactivation, a new password),
or changing roles (a user's groups or permissions, a group's permissions) makes that process
forget at once; other processes notice within those seconds, like Kubernetes' cached webhook token
authentication. Each request gets its own copy of the user object.
"""

from __future__ import annotations

import copy
import threading
import time

from django.conf import settings
from django.utils import timezone
from rest_framework.authentication import TokenAuthentication
from rest_framework.exceptions import AuthenticationFailed

from factory.models import ApiToken, token_digest

_PRUNE_AT = 10_000
_lock = threading.Lock()
_users: dict[str, tuple[object, ApiToken, float]] = {}  # digest → (user, token, valid until)


class ApiTokenAuthentication(TokenAuthentication):
    def authenticate_credentials(self, key: str):
        digest, now = token_digest(key), time.monotonic()
        ttl = settings.FACTORY_TOKEN_CACHE_SECONDS
        cached = _users.get(digest) if ttl > 0 else None
        if cached is not None and cached[2] > now:
            return copy.copy(cached[0]), cached[1]
        token = ApiToken.objects.select_related("user").filter(digest=digest).first()
        if token is None:
            raise AuthenticationFailed("Invalid token.")
        if token.expired:
            raise AuthenticationFailed("The token has expired.")
        if not token.user.is_active:
            raise AuthenticationFailed("User inactive or deleted.")
        if ttl > 0:
            # Its permissions too (two queries): cached copies share them, so a request on a cached
            # token asks nothing of the database to know what its user may do.
            token.user.get_all_permissions()
            left = (token.expires_at - timezone.now()).total_seconds()
            with _lock:
                if len(_users) >= _PRUNE_AT:
                    for stale in [d for d, (_, _, until) in _users.items() if until <= now]:
                        del _users[stale]
                _users[digest] = (copy.copy(token.user), token, now + min(ttl, left))
        return token.user, token


def forget_token(sender, instance: ApiToken, **kwargs) -> None:
    _users.pop(instance.digest, None)


def forget_user(sender, instance, **kwargs) -> None:
    with _lock:
        for digest in [d for d, (user, _, _) in _users.items() if user.pk == instance.pk]:
            _users.pop(digest, None)


def forget_all() -> None:
    _users.clear()


def forget_role_change(sender, instance, action: str, model, pk_set, **kwargs) -> None:
    """A user's groups or permissions changed, or a group's permissions: what the cached users may
    do may have changed."""
    if not action.startswith("post_"):
        return
    from django.contrib.auth import get_user_model

    user_model = get_user_model()
    if isinstance(instance, user_model):
        forget_user(sender, instance)
    elif model is user_model:
        for pk in pk_set or ():
            forget_user(sender, user_model(pk=pk))
    else:
        forget_all()  # a group's permissions: every member's
