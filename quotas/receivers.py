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
