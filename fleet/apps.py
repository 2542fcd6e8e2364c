from __future__ import annotations

from django.apps import AppConfig


class FleetConfig(AppConfig):
    name = "fleet"
    verbose_name = "GPU fleet"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from factory import metrics as portal_metrics
        from factory import panels as page_panels

        from . import metrics, panels

        portal_metrics.register(metrics.collect)
        page_panels.register("job-facts", panels.job_gpu_use)
        page_panels.register("cluster-card", panels.cluster_card)
        register_audited_models()


def register_audited_models() -> None:
    """What admins set of the fleet, in the audit trail (factory.audit); not what scrapes and
    health checks record."""
    from factory import audit

    from .models import ClusterTelemetry, Node

    audit.register(Node, include_fields=["cluster", "name", "gpu_type", "exporter_url"])
    audit.register(
        ClusterTelemetry,
        # The Prometheus settings as shown (credentials are never in `prometheus`); of the sealed
        # credentials only that they changed.
        include_fields=[
            "cluster",
            "enabled",
            "interval_seconds",
            "source",
            "prometheus",
            "prometheus_secrets_sealed",
        ],
        mask_fields=["prometheus_secrets_sealed"],
        mask_callable="factory.audit.mask_all",
    )
