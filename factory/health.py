"""`/healthz` and `/readyz` for load balancers, the proxy and orchestrators.

`/healthz`: the process answers (a liveness probe: restart it if not). `/readyz`: it can do its
work — the database answers, the Celery broker is reachable, every migration is applied (a
readiness probe: send it no traffic until then). Both are unauthenticated, cheap and say nothing
secret: the answer names each check and whether it passed, never an address or an error text.

They are answered by a middleware at the top of the stack, before host validation, the HTTPS
redirect, sessions or sign-in: a probe comes from the orchestrator with a pod address for a Host
and over plain HTTP, and must not need a session.
"""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, JsonResponse

PATHS = ("/healthz", "/readyz")
# Seconds the broker may take to answer a readiness check.
BROKER_TIMEOUT = 1.0


def database_ok() -> bool:
    from django.db import connection

    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            return cursor.fetchone() == (1,)
    except Exception:
        return False


def broker_ok() -> bool:
    from factory.celery import app

    try:
        with app.connection_for_write(connect_timeout=BROKER_TIMEOUT) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=BROKER_TIMEOUT)
            return True
    except Exception:
        return False


_migrated = False


def migrations_ok() -> bool:
    """Whether no migration is left to apply. Once true it stays true for the process (migrations
    only go forward while it runs), so only the first ready answers load the migration graph."""
    global _migrated
    if _migrated:
        return True
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    try:
        executor = MigrationExecutor(connection)
        _migrated = not executor.migration_plan(executor.loader.graph.leaf_nodes())
    except Exception:
        return False
    return _migrated


def readiness() -> dict[str, bool]:
    checks = {"database": database_ok()}
    checks["migrations"] = checks["database"] and migrations_ok()
    checks["broker"] = broker_ok()
    return checks


def health_response(path: str) -> HttpResponse:
    if path == "/healthz":
        response = JsonResponse({"status": "ok"})
    else:
        checks = readiness()
        ready = all(checks.values())
        answer = {name: "ok" if passed else "failing" for name, passed in checks.items()}
        response = JsonResponse(
            {"status": "ready" if ready else "not ready", "checks": answer}, status=200 if ready else 503
        )
    response["Cache-Control"] = "no-store"
    return response


class HealthCheckMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path_info in PATHS and request.method in ("GET", "HEAD"):
            return health_response(request.path_info)
        return self.get_response(request)
