from __future__ import annotations

from celery import shared_task

from . import alerts, metering


@shared_task(acks_late=True)
def meter() -> dict[str, int]:
    """Periodic: accrue finished months of running jobs, meter any ended job the release signal
    missed, and check budget alerts (their notifications go out on the notifications queue)."""
    return {
        "running": metering.meter_running(),
        "finished": metering.meter_finished(),
        "alerts": alerts.check_budget_alerts(),
    }
