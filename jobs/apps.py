from __future__ import annotations

from django.apps import AppConfig
from django.db.models.signals import post_delete, post_save


class JobsConfig(AppConfig):
    name = "jobs"

    def ready(self) -> None:
        from factory import metrics as portal_metrics
        from factory.models import Cluster, GpuType, Pool, Tenant
        from factory.signals import deletion_blockers

        from . import metrics, notifications, signals
        from .receivers import jobs_in_the_way
        from .submission import forget_pool_caches

        signals.job_state_changed.connect(notifications.on_job_state_changed, dispatch_uid="jobs.notify")
        portal_metrics.register(metrics.collect)
        for model in (Tenant, GpuType, Cluster, Pool):
            deletion_blockers.connect(
                jobs_in_the_way, sender=model, dispatch_uid=f"jobs.blocks.{model.__name__}"
            )

        for model in (Pool, Cluster):
            post_save.connect(forget_pool_caches, sender=model, dispatch_uid=f"jobs.forget.{model.__name__}")
            post_delete.connect(
                forget_pool_caches, sender=model, dispatch_uid=f"jobs.forget-d.{model.__name__}"
            )
