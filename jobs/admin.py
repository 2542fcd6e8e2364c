from __future__ import annotations

from django.contrib import admin

from factory.admin_site import ReadOnlyAdmin

from .models import Delivery, Job, JobArray, JobEvent, JobTemplate, NotificationSettings


class JobEventInline(admin.TabularInline):
    model = JobEvent
    extra = 0
    can_delete = False
    readonly_fields = ["at", "kind", "state", "message"]

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Job)
class JobAdmin(ReadOnlyAdmin):
    """Read-only: state changes go through the lifecycle methods, never by hand. Jobs are never
    deleted: their events are append-only, and reservations and the ledger refer to them."""

    list_display = [
        "id",
        "name",
        "tenant",
        "owner",
        "state",
        "gpu_count",
        "gpu_type",
        "cluster",
        "created_at",
    ]
    list_filter = ["state", "gpu_type", "cluster", "tenant"]
    search_fields = ["name", "uid", "external_id", "owner__username"]
    inlines = [JobEventInline]
    exclude = ["secrets_sealed", "idempotency_fingerprint"]


@admin.register(JobArray)
class JobArrayAdmin(ReadOnlyAdmin):
    """Read-only, like its tasks (which are jobs)."""

    list_display = ["id", "name", "tenant", "owner", "size", "max_running", "cluster", "external_id"]
    list_filter = ["tenant", "cluster"]
    search_fields = ["name", "uid", "external_id", "owner__username"]


@admin.register(NotificationSettings)
class NotificationSettingsAdmin(admin.ModelAdmin):
    """Users set these on their Notifications page; the signing key is never shown here."""

    list_display = ["user", "email", "webhook_url", "updated_at"]
    search_fields = ["user__username", "webhook_url"]
    fields = ["user", "events", "email", "webhook_url"]
    raw_id_fields = ["user"]


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    """What was sent, to whom, and how it went (read-only: the record of what happened)."""

    list_display = ["notification", "channel", "target", "state", "attempts", "sent_at", "last_error"]
    list_filter = ["state", "channel"]
    search_fields = ["target", "notification__user__username"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(JobTemplate)
class JobTemplateAdmin(admin.ModelAdmin):
    list_display = ["name", "owner", "tenant", "shared", "updated_at"]
    list_filter = ["shared"]
    search_fields = ["name", "owner__username", "tenant__slug"]
    raw_id_fields = ["owner", "tenant"]
