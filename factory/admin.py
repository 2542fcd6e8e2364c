from __future__ import annotations

import json

from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin

from .admin_site import ReadOnlyAdmin
from .audit import mask_connection
from .models import (
    ApiToken,
    ChangeSet,
    Cluster,
    GpuType,
    Identity,
    Membership,
    Pool,
    SsoAccount,
    SsoGroupRule,
    Tenant,
)


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]
    fields = ["user", "role", "source", "created_at"]
    readonly_fields = ["created_at"]


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = ["slug", "name", "cost_center", "parent"]
    search_fields = ["slug", "name", "cost_center"]
    inlines = [MembershipInline]


@admin.register(Identity)
class IdentityAdmin(admin.ModelAdmin):
    list_display = ["user", "posix_username", "updated_at"]
    search_fields = ["user__username", "posix_username"]
    autocomplete_fields = ["user"]

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        if db_field.name == "posix_username":
            kwargs["strip"] = False  # checked as typed: stray whitespace is an error, not trimmed away
        return super().formfield_for_dbfield(db_field, request, **kwargs)


@admin.register(GpuType)
class GpuTypeAdmin(admin.ModelAdmin):
    list_display = ["slug", "name", "memory_gb", "board_power_watts"]


class PoolInline(admin.TabularInline):
    model = Pool
    extra = 0
    # The node shape and topology its backend reported with the cluster's health.
    readonly_fields = ["node_count", "node_gpus", "node_cpus", "node_memory_mb", "topology"]


@admin.register(Cluster)
class ClusterAdmin(admin.ModelAdmin):
    list_display = ["slug", "name", "kind", "region", "enabled", "draining", "health_checked_at"]
    list_filter = ["kind", "region", "enabled", "draining"]
    readonly_fields = ["health", "health_checked_at"]
    inlines = [PoolInline]

    def get_fields(self, request, obj=None):
        fields = list(super().get_fields(request, obj))
        if obj is not None and not self.has_change_permission(request, obj):
            # Read only (an auditor's view): the settings with their secrets masked.
            fields = ["connection_shown" if name == "connection" else name for name in fields]
        return fields

    def get_readonly_fields(self, request, obj=None):
        fields = list(super().get_readonly_fields(request, obj))
        if obj is not None and not self.has_change_permission(request, obj):
            fields.append("connection_shown")
        return fields

    @admin.display(description="Connection")
    def connection_shown(self, cluster: Cluster) -> str:
        return mask_connection(json.dumps(cluster.connection or {}))

    def get_form(self, request, obj=None, **kwargs):
        form = super().get_form(request, obj, **kwargs)
        if obj is not None and "connection" in form.base_fields:
            # Credentials may live here: editable, but not displayed after saving.
            form.base_fields[
                "connection"
            ].help_text = "Backend connection settings (JSON). Leave as {} to keep the stored settings."
        return form

    def get_changeform_initial_data(self, request):
        return {"connection": {}}

    def render_change_form(self, request, context, *args, obj=None, **kwargs):
        if obj is not None and "adminform" in context and "connection" in context["adminform"].form.fields:
            context["adminform"].form.initial["connection"] = {}
        return super().render_change_form(request, context, *args, obj=obj, **kwargs)

    def save_model(self, request, obj, form, change):
        if change and form.cleaned_data.get("connection") == {}:
            obj.connection = Cluster.objects.get(pk=obj.pk).connection
        super().save_model(request, obj, form, change)


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Tokens are made by their users (who alone see them, once); an admin sees who holds which
    and can revoke one by deleting it."""

    list_display = ["user", "name", "prefix", "created_at", "expires_at"]
    list_filter = ["expires_at"]
    search_fields = ["user__username", "name", "prefix"]
    fields = ["user", "name", "prefix", "created_at", "expires_at"]
    readonly_fields = fields

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(SsoGroupRule)
class SsoGroupRuleAdmin(admin.ModelAdmin):
    """The rules single sign-on applies at every sign-in: group at the provider → role in a
    tenant, or a platform role."""

    list_display = ["group", "is_pattern", "tenant", "role", "platform_role", "created_at"]
    list_filter = ["is_pattern", "role", "platform_role"]
    search_fields = ["group", "tenant__slug"]
    autocomplete_fields = ["tenant"]


@admin.register(SsoAccount)
class SsoAccountAdmin(admin.ModelAdmin):
    """Which portal user each person at the identity provider is. An admin links an existing
    account (a local one being moved to single sign-on) by adding a row with its subject."""

    list_display = ["user", "subject", "issuer", "last_login_at"]
    search_fields = ["user__username", "subject"]
    autocomplete_fields = ["user"]
    readonly_fields = ["groups", "platform_roles", "created_at", "last_login_at"]


@admin.register(ChangeSet)
class ChangeSetAdmin(ReadOnlyAdmin):
    """Applied platform files: an audit record, read only."""

    list_display = ["applied_at", "author", "summary", "source"]
    list_filter = ["author"]
    readonly_fields = ["author", "source", "digest", "summary", "changes", "applied_at"]


User = get_user_model()
admin.site.unregister(User)


@admin.register(User)
class PortalUserAdmin(UserAdmin):
    """Users and their platform roles: platform admin, finance and auditor are the groups of those
    names (factory.roles). Making a superuser or granting a single permission is a superuser's."""

    list_display = ["username", "email", "first_name", "last_name", "roles", "is_active"]
    list_filter = ["groups", "is_active", "is_superuser"]
    fieldsets = [
        (None, {"fields": ["username", "password"]}),
        ("Personal info", {"fields": ["first_name", "last_name", "email"]}),
        (
            "Roles",
            {
                "fields": ["is_active", "groups", "is_superuser", "user_permissions"],
                "description": "Platform roles are the groups platform-admin, finance and auditor; "
                "roles in a tenant are its memberships.",
            },
        ),
        ("Important dates", {"fields": ["last_login", "date_joined"]}),
    ]

    @admin.display(description="Platform roles")
    def roles(self, user) -> str:
        return ", ".join(sorted(g.name for g in user.groups.all())) or "—"

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("groups")

    def get_readonly_fields(self, request, obj=None):
        fields = list(super().get_readonly_fields(request, obj))
        if not request.user.is_superuser:
            fields += ["is_superuser", "user_permissions"]
        return fields
