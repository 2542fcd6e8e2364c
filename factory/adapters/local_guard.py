"""Whether the `local` backend may run on this host, and the deployment check that says so early.

Kept apart from local.py so that registering the check (in every process) does not load the
adapter and its connection schema.
"""

from __future__ import annotations

from django.conf import settings
from django.core import checks
from django.db import DatabaseError

REFUSED = (
    "the local backend runs jobs on the portal's own host, beside its database and secrets: it runs "
    "only with DEBUG=1 (development) or FACTORY_ALLOW_LOCAL_BACKEND=1 (a host given over to it)"
)


def allowed() -> bool:
    return settings.DEBUG or settings.FACTORY_ALLOW_LOCAL_BACKEND


def check_local_clusters(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    """Under production settings a cluster of kind `local` would have every job refused: say so at
    deployment (`manage.py check --deploy`), not when the first job fails."""
    if allowed():
        return []
    from ..choices import ClusterKind
    from ..models import Cluster

    try:
        slugs = list(Cluster.objects.filter(kind=ClusterKind.LOCAL).values_list("slug", flat=True))
    except DatabaseError:
        return []  # no database to look in yet (unreachable, not migrated): nothing to say
    if not slugs:
        return []
    return [
        checks.Error(
            f"Cluster(s) {', '.join(slugs)} would have every job refused: {REFUSED}.",
            hint="Delete the cluster(s) or give them another kind; set FACTORY_ALLOW_LOCAL_BACKEND=1 only "
            "if this host is meant to run jobs itself.",
            id="factory.E002",
        )
    ]
