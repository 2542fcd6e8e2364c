from __future__ import annotations

from django.apps import AppConfig


class PlatformConfigConfig(AppConfig):
    name = "platform_config"
    verbose_name = "Platform as code"
