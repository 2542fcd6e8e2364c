"""Settings: the test suite's own module adds a fast password hasher; production has none."""

from __future__ import annotations

import os
import subprocess
import sys

from django.conf import settings


def test_the_suite_runs_on_its_own_settings():
    assert os.environ["DJANGO_SETTINGS_MODULE"] == "factory.settings_test"
    assert settings.PASSWORD_HASHERS == ["django.contrib.auth.hashers.MD5PasswordHasher"]


def test_production_settings_have_no_fast_password_hasher():
    """MD5 is for the test suite only (factory/settings_test.py): no variable turns it on."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "factory.settings", "FACTORY_FAST_PASSWORDS": "1"}
    code = "from django.conf import settings; print(settings.PASSWORD_HASHERS)"
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=60
    )
    assert "MD5" not in result.stdout and "PBKDF2PasswordHasher" in result.stdout
