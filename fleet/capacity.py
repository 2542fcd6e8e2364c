"""GPUs out of service, for admission: a GPU that failed or that the portal drained, and every GPU
of a node the portal drained. Counted per node, so that a node missing one GPU is not taken for a
whole node: a gang that needs all 8 GPUs of each node cannot use it."""

from __future__ import annotations

from collections import defaultdict

from django.db.models import Count, Q

from .choices import Health
from .models import Gpu


def out_of_service() -> dict[tuple[int, int], dict[str, int]]:
    """{(cluster id, GPU type id): {node name: its GPUs out of service}} (one query). A failed GPU
    counts before its drain is made: the backend may not have taken it yet, or refused to."""
    out = Gpu.objects.filter(
        Q(health=Health.FAILED) | Q(drained_by_portal=True) | Q(node__drained_by_portal=True),
        gpu_type__isnull=False,
    )
    rows = out.values_list("cluster_id", "gpu_type_id", "node__name").annotate(n=Count("pk")).order_by()
    found: dict[tuple[int, int], dict[str, int]] = defaultdict(dict)
    for cluster_id, gpu_type_id, node, count in rows:
        found[cluster_id, gpu_type_id][node] = count
    return found
