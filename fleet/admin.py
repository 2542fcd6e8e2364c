from __future__ import annotations

from django.contrib import admin

from .models import ClusterTelemetry, Gpu, Node


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


@admin.register(ClusterTelemetry)
class ClusterTelemetryAdmin(admin.ModelAdmin):
    list_display = ["cluster", "enabled", "interval_seconds", "scraped_at", "cycle_seconds"]
