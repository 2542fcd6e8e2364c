from __future__ import annotations

from django.apps import AppConfig


class QuotasConfig(AppConfig):
    name = "quotas"

    def ready(self) -> None:
        from factory import metrics as portal_metrics
        from factory.models import GpuType, Tenant
        from factory.signals import deletion_blockers, demo_seeded, tenant_moving
        from jobs import signals

        from . import metrics, receivers
        from .models import Quota

        for model in (Tenant, GpuType, Quota):
            deletion_blockers.connect(
                receivers.reservations_in_the_way,
                sender=model,
                dispatch_uid=f"quotas.blocks.{model.__name__}",
            )

        portal_metrics.register(metrics.collect)
        signals.job_submitted.connect(receivers.readmit, dispatch_uid="quotas.readmit.submitted")
        signals.job_released.connect(receivers.settle, dispatch_uid="quotas.settle.released")
        signals.job_released.connect(receivers.readmit, dispatch_uid="quotas.readmit.released")
        demo_seeded.connect(receivers.seed_demo, dispatch_uid="quotas.seed_demo")
        tenant_moving.connect(receivers.quotas_outgrown, sender=Tenant, dispatch_uid="quotas.tenant_moving")
        register_audited_models()


def register_audited_models() -> None:
    """Quotas and budgets in the audit trail (factory.audit)."""
    from factory import audit

    from .models import Budget, Quota

    audit.register(Quota, exclude_fields=["updated_at"])
    audit.register(Budget, exclude_fields=["updated_at"])
