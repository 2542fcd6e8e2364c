"""Sealing values at rest (job secrets): authenticated encryption with Fernet (AES-128-CBC and
HMAC-SHA256, from `cryptography`), under keys from settings.

FACTORY_SECRET_KEYS lists Fernet keys, newest first: the first seals, every one opens, so keys
rotate without a flag day. Without any, one key is derived from SECRET_KEY, so a development
setup needs nothing more (and changing SECRET_KEY then makes sealed values unreadable).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from functools import cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


class SealBroken(Exception):
    """A sealed value no configured key opens (a key was dropped too early, or it was altered)."""


@cache
def _keys(configured: tuple[str, ...], secret_key: str) -> MultiFernet:
    if configured:
        try:
            return MultiFernet([Fernet(key) for key in configured])
        except ValueError:
            raise ImproperlyConfigured(
                "FACTORY_SECRET_KEYS must be Fernet keys (32 url-safe base64 bytes)"
            ) from None
    derived = hashlib.sha256(b"factory:job-secrets:" + secret_key.encode()).digest()
    return MultiFernet([Fernet(base64.urlsafe_b64encode(derived))])


def _fernet() -> MultiFernet:
    return _keys(tuple(settings.FACTORY_SECRET_KEYS), settings.SECRET_KEY)


def seal(values: dict[str, str]) -> str:
    """The mapping, encrypted and authenticated, as text; empty for an empty mapping."""
    if not values:
        return ""
    return _fernet().encrypt(json.dumps(values, sort_keys=True).encode()).decode()


def unseal(sealed: str) -> dict[str, str]:
    if not sealed:
        return {}
    try:
        return json.loads(_fernet().decrypt(sealed.encode()))
    except InvalidToken:
        raise SealBroken("no configured key opens this sealed value") from None


def reseal(sealed: str) -> str:
    """The same value sealed under the newest key."""
    if not sealed:
        return ""
    try:
        return _fernet().rotate(sealed.encode()).decode()
    except InvalidToken:
        raise SealBroken("no configured key opens this sealed value") from None


def keyed_digest(value: str) -> str:
    """A digest of a secret that cannot be checked against guesses without SECRET_KEY (for
    telling two requests apart, never for storing what they carried)."""
    return hmac.new(settings.SECRET_KEY.encode(), value.encode(), hashlib.sha256).hexdigest()
