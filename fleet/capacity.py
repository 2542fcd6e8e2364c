"""GPUs out of service, for admission: a GPU the portal drained, or any GPU of a node it drained."""

from __future__ import annotations

from collections import Counter

from django.db.models import Count, Q

from .models import Gpu


def drained_gpus() -> Counter[tuple[int, int]]:
    """{(cluster id, GPU type id): GPUs the portal took out of service}."""
    out = Gpu.objects.filter(
        Q(drained_by_portal=True) | Q(node__drained_by_portal=True), gpu_type__isnull=False
    )
    rows = out.values("cluster_id", "gpu_type_id").annotate(n=Count("pk"))
    return Counter({(row["cluster_id"], row["gpu_type_id"]): row["n"] for row in rows})
