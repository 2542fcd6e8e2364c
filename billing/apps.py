from __future__ import annotations

from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"

    def ready(self) -> None:
        from factory import panels as page_panels
        from factory.signals import demo_seeded
        from jobs.signals import job_released

        from . import panels, receivers

        page_panels.register("job-facts", panels.job_cost)
        page_panels.register("tenant-dashboard", panels.tenant_spend)

        job_released.connect(receivers.meter_released, dispatch_uid="billing.meter")
        demo_seeded.connect(receivers.seed_demo, dispatch_uid="billing.seed_demo")
