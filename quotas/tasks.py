from __future__ import annotations

from celery import shared_task

from . import admission


@shared_task(acks_late=True)
def admit_pending() -> int:
    return admission.admit_pending()
