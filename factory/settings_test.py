"""The test suite's settings: production settings with a fast password hasher.

Hashing with PBKDF2 costs about 300 ms per sign-in, and the suite signs in often. Only the tests
use this module (pytest's DJANGO_SETTINGS_MODULE, and the servers and workers they start inherit
it); nothing in production can switch MD5 on.
"""

from __future__ import annotations

from .settings import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
