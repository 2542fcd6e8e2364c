"""ASGI entry point: pages, the API and the live event streams are all served from here."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "factory.settings")

application = get_asgi_application()
