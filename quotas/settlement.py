"""Settlement: what admission set aside for a job attempt (GPUs × time limit) is replaced by the
GPU-hours the attempt really used once it stops holding GPUs; the rest goes back to the month's
budget. GPU-hours are kept to four places, rounded half up, like the Reservation columns."""

from __future__ import annotations

from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

from django.db import models
from django.utils import timezone

from jobs.choices import HOLDING_STATES

from .models import Reservation

GPU_HOURS_PLACES = Decimal("0.0001")


def round_gpu_hours(value: Decimal) -> Decimal:
    return value.quantize(GPU_HOURS_PLACES, rounding=ROUND_HALF_UP)


def gpu_hours_between(gpus: int, start: datetime | None, end: datetime | None) -> Decimal:
    if start is None or end is None or end <= start:
        return Decimal(0)
    hours = Decimal((end - start).total_seconds()) / Decimal(3600)
    return round_gpu_hours(gpus * hours)


def settle_released() -> int:
    """Settle every reservation whose job attempt no longer holds GPUs: the real GPU-hours replace
    the reservation (the rest is refunded). Conditional, so each is settled exactly once."""
    stale = (
        Reservation.objects.open()
        .filter(~models.Q(job__state__in=HOLDING_STATES) | ~models.Q(job__attempt=models.F("attempt")))
        .select_related("job")
    )
    settled = 0
    for reservation in stale:
        job = reservation.job
        same_attempt = job.attempt == reservation.attempt
        used = (
            gpu_hours_between(reservation.gpus, job.started_at, job.ended_at) if same_attempt else Decimal(0)
        )
        settled += Reservation.objects.filter(pk=reservation.pk, settled_at__isnull=True).update(
            used_gpu_hours=used, settled_at=timezone.now()
        )
    return settled
