from __future__ import annotations

from django import forms
from django.contrib import admin

from factory.admin_site import ReadOnlyAdmin

from .choices import TelemetrySource
from .models import ClusterTelemetry, Gpu, HealthEvent, Node


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "cluster",
        "gpu_type",
        "health",
        "drained_by_portal",
        "scraped_at",
        "scrape_error",
    ]
    list_filter = ["cluster", "health", "drained_by_portal"]
    search_fields = ["name"]
    readonly_fields = [
        "health",
        "health_reason",
        "health_since",
        "drained_by_portal",
        "drain_reason",
        "drained_at",
        "clean_since",
        "scraped_at",
        "scrape_error",
        "scrape_errors",
        "instance",
    ]


@admin.register(Gpu)
class GpuAdmin(admin.ModelAdmin):
    list_display = ["uuid", "node", "index", "model_name", "health", "temperature_c", "power_w", "job"]
    list_filter = ["cluster", "health", "drained_by_portal"]
    search_fields = ["uuid", "node__name"]
    list_select_related = ["node__cluster", "job"]
    raw_id_fields = ["node", "job"]

    def has_add_permission(self, request) -> bool:
        return False  # GPUs are found by scraping their node's exporter


@admin.register(HealthEvent)
class HealthEventAdmin(ReadOnlyAdmin):
    """The hardware's history, searched across the fleet (by node, GPU UUID, reason); written by
    the portal alone, never edited."""

    list_display = ["at", "node", "gpu_uuid", "kind", "health", "reason"]
    list_filter = ["cluster", "kind", "health"]
    search_fields = ["node__name", "gpu_uuid", "reason"]
    list_select_related = ["node__cluster"]
    date_hierarchy = "at"


class ClusterTelemetryForm(forms.ModelForm):
    """The Prometheus settings as JSON; its credentials are write-only, as clusters' are."""

    prometheus_settings = forms.JSONField(
        label="Prometheus settings",
        required=False,
        help_text=(
            'JSON, e.g. {"url": "https://prometheus.example.org", "match": {"job": "dcgm-exporter", '
            '"cluster": "a"}, "bearer_token": "…"}; also node_label, username and password, verify_tls, '
            "ca_file, client_cert_file, client_key_file, timeout. bearer_token and password are never "
            "shown: leave them out to keep the stored ones, give null to remove them."
        ),
    )

    class Meta:
        model = ClusterTelemetry
        fields = ["cluster", "enabled", "interval_seconds", "source"]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["prometheus_settings"].initial = self.instance.prometheus or {}
        stored = sorted(self.instance.prometheus_secrets()) if self.instance.pk else []
        if stored:
            self.fields["prometheus_settings"].help_text += f" Stored: {', '.join(stored)}."

    def clean(self):
        data = super().clean()
        settings = data.get("prometheus_settings") or {}
        if data.get("source") == TelemetrySource.PROMETHEUS or settings:
            try:
                self.instance.set_prometheus(settings)
            except ValueError as exc:
                self.add_error("prometheus_settings", str(exc))
        return data


@admin.register(ClusterTelemetry)
class ClusterTelemetryAdmin(admin.ModelAdmin):
    form = ClusterTelemetryForm
    list_display = ["cluster", "source", "enabled", "interval_seconds", "scraped_at", "unavailable_since"]
    readonly_fields = ["scraped_at", "cycle_seconds", "unavailable_since", "unavailable_reason"]
