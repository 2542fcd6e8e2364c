from __future__ import annotations

from smtplib import SMTPException

from celery import shared_task

from . import alerts, metering


@shared_task(acks_late=True)
def meter() -> dict[str, int]:
    """Periodic: accrue finished months of running jobs, meter any ended job the release signal
    missed, and check budget alerts (their mails go out on the notifications queue)."""
    return {
        "running": metering.meter_running(),
        "finished": metering.meter_finished(),
        "alerts": alerts.check_budget_alerts(),
    }


@shared_task(
    acks_late=True,
    autoretry_for=(SMTPException, OSError),
    retry_backoff=30,
    retry_backoff_max=600,
    max_retries=8,
)
def send_budget_alert(alert_id: int, words: str) -> bool:
    return alerts.mail_alert(alert_id, words)
