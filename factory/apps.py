from __future__ import annotations

from django.apps import AppConfig


class FactoryConfig(AppConfig):
    name = "factory"
    verbose_name = "AI factory"
