from __future__ import annotations

from celery import shared_task

from . import admission


@shared_task(acks_late=True)
def admit_pending() -> dict[str, int]:
    result = admission.admit_pending()
    return {"admitted": result.admitted, "waiting": result.waiting, "preempted": result.preempted}
