from __future__ import annotations

from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from . import alerts, metering


@shared_task(acks_late=True)
def meter() -> dict[str, int]:
    """Periodic: accrue finished months of running jobs, meter any job that ended lately and that
    the release signal missed, and check budget alerts (their notifications go out on the
    notifications queue)."""
    since = timezone.now() - timedelta(seconds=settings.FACTORY_METERING_LOOKBACK)
    return {
        "running": metering.meter_running(),
        "finished": metering.meter_finished(since=since),
        "alerts": alerts.check_budget_alerts(),
    }


@shared_task(acks_late=True)
def meter_all_finished() -> int:
    """Periodic, rarer (FACTORY_METERING_FULL_INTERVAL): the safety net over every ended job,
    however long ago it changed; what the frequent pass could miss (a job found ended after a
    long outage, whose metering was lost too) is billed within this interval."""
    return metering.meter_finished()
