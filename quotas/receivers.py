from __future__ import annotations

from django.core.cache import cache

# At most one queued admission pass per this many seconds from job events: a pass admits every
# job that fits, so a burst of submissions needs one pass, not one each.
READMIT_DEBOUNCE_SECONDS = 1


def readmit(sender, **kwargs) -> None:
    """A job arrived, or one freed GPUs: run admission (the signals are sent after commit)."""
    from .tasks import admit_pending

    if cache.add("quotas:readmit-queued", True, timeout=READMIT_DEBOUNCE_SECONDS):
        admit_pending.delay()


def settle(sender, **kwargs) -> None:
    """A job stopped holding GPUs: replace its reservation by what it really used."""
    from .settlement import settle_released

    settle_released()


def reservations_in_the_way(sender, ids, **kwargs) -> dict[int, list[str]]:
    """GPUs set aside for a running job keep their tenant, GPU type and quota until settled."""
    from django.db.models import Count

    from factory.models import GpuType, Tenant
    from factory.signals import counted

    from .models import Quota, Reservation

    running = Reservation.objects.open()
    if sender is Quota:
        quotas = {
            (t, g): pk
            for pk, t, g in Quota.objects.filter(pk__in=ids).values_list("pk", "tenant_id", "gpu_type_id")
        }
        rows = (
            running.filter(tenant_id__in={t for t, _ in quotas})
            .values("tenant_id", "gpu_type_id")
            .annotate(n=Count("pk"))
        )
        return {
            quotas[row["tenant_id"], row["gpu_type_id"]]: [f"{row['n']} running reservations"]
            for row in rows
            if (row["tenant_id"], row["gpu_type_id"]) in quotas
        }
    column = {Tenant: "tenant_id", GpuType: "gpu_type_id"}[sender]
    return counted(running, column, ids, "running reservations")


def quotas_outgrown(sender, tenant, parent, **kwargs) -> list[str]:
    """A tenant moving below another brings its quotas along: the new ancestors' must hold them."""
    from .nesting import move_problems

    return move_problems(tenant, parent)


def seed_demo(sender, tenant, **kwargs) -> None:
    """The demo tenant gets the local cluster's GPUs as its quota and a hard monthly budget."""
    from decimal import Decimal

    from factory.models import GpuType

    from .models import Budget, Quota

    for gpu_type in GpuType.objects.filter(slug__in=["h100", "a100"]):
        Quota.objects.get_or_create(
            tenant=tenant, gpu_type=gpu_type, defaults={"nominal": 4, "max_gpus_per_job": 4}
        )
    Budget.objects.get_or_create(
        tenant=tenant, defaults={"gpu_hours_per_month": Decimal(2000), "hard": True, "max_priority": 10}
    )
