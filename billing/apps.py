from __future__ import annotations

from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"

    def ready(self) -> None:
        from factory import panels as page_panels
        from factory.models import Cluster, GpuType, Tenant
        from factory.signals import deletion_blockers, demo_seeded, tenant_moving
        from jobs.signals import job_released

        from . import panels, receivers
        from .models import RateCard

        page_panels.register("job-facts", panels.job_cost)
        page_panels.register("tenant-dashboard", panels.tenant_spend)

        job_released.connect(receivers.meter_released, dispatch_uid="billing.meter")
        demo_seeded.connect(receivers.seed_demo, dispatch_uid="billing.seed_demo")
        tenant_moving.connect(
            receivers.billing_account_moving, sender=Tenant, dispatch_uid="billing.tenant_moving"
        )
        for model in (Tenant, GpuType, Cluster, RateCard):
            deletion_blockers.connect(
                receivers.ledger_lines_in_the_way,
                sender=model,
                dispatch_uid=f"billing.blocks.{model.__name__}",
            )
        register_audited_models()


def register_audited_models() -> None:
    """Prices, month closes, billing accounts and grid intensities in the audit trail
    (factory.audit). Credits and corrections are ledger lines naming who made them and why."""
    from factory import audit

    from .models import BillingAccount, GridIntensity, MonthClose, RateCard

    audit.register(RateCard, exclude_fields=["created_at"])
    audit.register(MonthClose)
    audit.register(BillingAccount, exclude_fields=["created_at"])
    audit.register(GridIntensity)
