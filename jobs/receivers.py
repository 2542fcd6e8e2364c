"""What the jobs app answers to the signals of the app below it."""

from __future__ import annotations


def jobs_in_the_way(sender, ids, **kwargs) -> dict[int, list[str]]:
    """A tenant, GPU type or cluster that jobs name is never deleted (their history is the bill);
    a pool is not while jobs hold its GPUs."""
    from django.db.models import Count

    from factory.models import Cluster, GpuType, Pool, Tenant
    from factory.signals import counted

    from .choices import HOLDING_STATES
    from .models import Job

    if sender is Pool:
        pools = {
            (c, g): pk
            for pk, c, g in Pool.objects.filter(pk__in=ids).values_list("pk", "cluster_id", "gpu_type_id")
        }
        holding = (
            Job.objects.filter(state__in=HOLDING_STATES, cluster_id__in={c for c, _ in pools})
            .values("cluster_id", "gpu_type_id")
            .annotate(n=Count("pk"))
        )
        return {
            pools[row["cluster_id"], row["gpu_type_id"]]: [f"{row['n']} jobs holding its GPUs"]
            for row in holding
            if (row["cluster_id"], row["gpu_type_id"]) in pools
        }
    column = {Tenant: "tenant_id", GpuType: "gpu_type_id", Cluster: "cluster_id"}[sender]
    return counted(Job.objects, column, ids, "jobs")
