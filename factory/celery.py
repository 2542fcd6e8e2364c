"""The Celery app: tasks are found in each app's tasks.py; the periodic sweep is scheduled here."""

from __future__ import annotations

import os

from celery import Celery
from celery.signals import beat_init, task_postrun, worker_init

from factory.preflight import database_or_exit, settings_loaded_or_exit

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "factory.settings")

app = Celery("factory")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.on_configure.connect
def _settings_or_exit(sender: Celery, **kwargs) -> None:
    """When the app first reads its configuration (a worker or beat starting), before the settings
    module is loaded for it: a bad setting stops the process with one line."""
    settings_loaded_or_exit()


@app.on_after_configure.connect
def _prepare(sender: Celery, **kwargs) -> None:
    from django.conf import settings

    # celery-redbeat looks for its Redis settings under their own names only (it reads the
    # CELERY_-prefixed ones, then warns that they are missing): give them those names too.
    for name in ("redbeat_redis_url", "redbeat_redis_options"):
        if hasattr(settings, f"CELERY_{name.upper()}"):
            sender.conf[name] = getattr(settings, f"CELERY_{name.upper()}")
    if settings.CELERY_BROKER_URL.startswith("filesystem://"):
        # The filesystem transport dies on folders that do not exist yet.
        for key in ("data_folder_in", "control_folder", "processed_folder"):
            os.makedirs(settings.CELERY_BROKER_TRANSPORT_OPTIONS[key], exist_ok=True)


@worker_init.connect
@beat_init.connect
def _database_or_exit(**kwargs) -> None:
    """A worker or beat starting: a database that does not answer stops it with one line, rather
    than a process that takes tasks it cannot run or retries its connection for ever."""
    database_or_exit()


@task_postrun.connect
def _release_connections(**kwargs) -> None:
    """Hand the task's database connections back (to the pool, when there is one); broken ones are
    dropped. Cheap, unlike closing the pool itself."""
    from django.db import close_old_connections

    close_old_connections()
