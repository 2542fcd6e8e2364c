"""WSGI entry point: pages and the API, served by gunicorn (deploy/gunicorn.conf.py)."""

from __future__ import annotations

from django.core.handlers.wsgi import WSGIHandler

from factory.preflight import settings_or_exit

# gunicorn's master has checked the database already (its on_starting hook); a worker only loads.
settings_or_exit()
application = WSGIHandler()
