from __future__ import annotations

from django.apps import AppConfig


class QuotasConfig(AppConfig):
    name = "quotas"

    def ready(self) -> None:
        from jobs import signals

        from . import receivers

        signals.job_submitted.connect(receivers.readmit, dispatch_uid="quotas.readmit.submitted")
        signals.job_released.connect(receivers.readmit, dispatch_uid="quotas.readmit.released")
