"""API token authentication with a short per-process memory of each token's user.

Every API request authenticates, and the token look-up (token joined to its user) is one of the
few database queries a job submission makes. A token's user is remembered for
FACTORY_TOKEN_CACHE_SECONDS (default 10; 0 turns it off) in the process that looked it up.
Deleting a token, or saving or deleting its user (deactivation, a new password), makes that
process forget at once; other processes notice within those seconds, like Kubernetes' cached
webhook token authentication. Each request gets its own copy of the user object.
"""

from __future__ import annotations

import copy
import hashlib
import threading
import time

from django.conf import settings
from rest_framework.authentication import TokenAuthentication

_PRUNE_AT = 10_000
_lock = threading.Lock()
_users: dict[str, tuple[object, object, float]] = {}  # token digest → (user, token, valid until)


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class CachedTokenAuthentication(TokenAuthentication):
    def authenticate_credentials(self, key):
        ttl = settings.FACTORY_TOKEN_CACHE_SECONDS
        if ttl <= 0:
            return super().authenticate_credentials(key)
        digest, now = _digest(key), time.monotonic()
        cached = _users.get(digest)
        if cached is not None and cached[2] > now:
            return copy.copy(cached[0]), cached[1]
        user, token = super().authenticate_credentials(key)  # raises for unknown keys, inactive users
        with _lock:
            if len(_users) >= _PRUNE_AT:
                for stale in [d for d, (_, _, until) in _users.items() if until <= now]:
                    del _users[stale]
            _users[digest] = (copy.copy(user), token, now + ttl)
        return user, token


def forget_token(sender, instance, **kwargs) -> None:
    _users.pop(_digest(instance.key), None)


def forget_user(sender, instance, **kwargs) -> None:
    with _lock:
        for digest in [d for d, (user, _, _) in _users.items() if user.pk == instance.pk]:
            _users.pop(digest, None)


def forget_all() -> None:
    _users.clear()
