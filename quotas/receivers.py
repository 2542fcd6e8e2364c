from __future__ import annotations


def readmit(sender, **kwargs) -> None:
    """A job arrived or freed GPUs: run admission (the signals are sent after commit)."""
    from .tasks import admit_pending

    admit_pending.delay()
