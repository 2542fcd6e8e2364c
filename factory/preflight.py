"""What a server process checks before it serves: its settings load, and its database answers.

A process that cannot work (no or a weak SECRET_KEY, DEBUG on for a public host, a database that
cannot be reached) stops at once with one line saying why and exit status 2, not a traceback and
not a server that answers every request with an error. The web servers call `start_or_exit`
before they serve (deploy/gunicorn.conf.py in the master, before any worker is forked;
factory.asgi as it is loaded), `manage.py` calls `settings_or_exit`, and the Celery app's module
(workers, beat) `settings_loaded_or_exit` as it loads and `database_or_exit` as the process
starts.
"""

from __future__ import annotations

import os
import sys

from django.core.exceptions import ImproperlyConfigured

EXIT_STATUS = 2
# Seconds a process waits for the database at start before it gives up.
CONNECT_TIMEOUT = 5


def fail(message: str) -> None:
    """Say why the process cannot start, on one line, and stop it. The line goes to the process's
    own standard error, even where Celery has sent `sys.stderr` to its logger."""
    stream = sys.__stderr__ or sys.stderr
    stream.write(f"factory: cannot start: {message}\n")
    stream.flush()
    raise SystemExit(EXIT_STATUS)


def settings_or_exit() -> None:
    """Load the settings and the apps; a bad value stops the process with its one line."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "factory.settings")
    import django

    try:
        django.setup(set_prefix=False)
    except ImproperlyConfigured as exc:
        fail(str(exc))


def settings_loaded_or_exit() -> None:
    """Import the settings module (not the apps: this runs while they load, from the Celery app's
    module); a bad value stops the process with its one line."""
    from django.conf import settings

    try:
        settings.SECRET_KEY  # noqa: B018 - the first access imports the module
    except ImproperlyConfigured as exc:
        fail(str(exc))


def describe_database(settings_dict: dict) -> str:
    """Where the database is, without its password."""
    engine = settings_dict["ENGINE"].rsplit(".", 1)[-1]
    host = settings_dict.get("HOST") or "localhost"
    port = f":{settings_dict['PORT']}" if settings_dict.get("PORT") else ""
    return f"{engine} database {settings_dict['NAME']!s} at {host}{port}"


def database_or_exit() -> None:
    """Connect to the database once, outside any pool (nothing is left open for a server to fork
    with), and stop the process if it does not answer within CONNECT_TIMEOUT seconds."""
    from django.db import connection

    if connection.vendor != "postgresql":
        return  # SQLite: a file this process creates
    import psycopg

    params = connection.get_connection_params()
    params["connect_timeout"] = CONNECT_TIMEOUT
    try:
        psycopg.connect(**params).close()
    except psycopg.Error as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        fail(f"cannot reach the {describe_database(connection.settings_dict)}: {reason}")


def start_or_exit() -> None:
    settings_or_exit()
    database_or_exit()
