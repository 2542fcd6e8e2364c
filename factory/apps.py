from __future__ import annotations

from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps


class FactoryConfig(AppConfig):
    name = "factory"
    verbose_name = "AI factory"

    def ready(self) -> None:
        from django.contrib.auth import get_user_model
        from django.contrib.auth.models import Group
        from django.core import checks
        from django.db.models.signals import m2m_changed, post_delete, post_migrate, post_save

        from .adapters.local_guard import check_local_clusters
        from .api import authentication
        from .api.viewsets import check_api_scoping
        from .models import ApiToken
        from .roles import sync_groups_after_migrate

        checks.register(check_api_scoping, checks.Tags.security, checks.Tags.urls)
        checks.register(check_local_clusters, checks.Tags.security, deploy=True)

        register_audited_models()
        post_migrate.connect(sync_groups_after_migrate, dispatch_uid="factory.sync-role-groups")
        post_delete.connect(authentication.forget_token, sender=ApiToken, dispatch_uid="factory.forget-token")
        user_model = get_user_model()
        post_save.connect(authentication.forget_user, sender=user_model, dispatch_uid="factory.forget-user-s")
        post_delete.connect(
            authentication.forget_user, sender=user_model, dispatch_uid="factory.forget-user-d"
        )
        for through in (
            user_model.groups.through,
            user_model.user_permissions.through,
            Group.permissions.through,
        ):
            m2m_changed.connect(
                authentication.forget_role_change,
                sender=through,
                dispatch_uid=f"factory.forget-roles-{through}",
            )


def register_audited_models() -> None:
    """This app's models in the audit trail (factory.audit), with what is kept of each."""
    from auditlog.models import LogEntry
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group
    from django.db.models.signals import pre_save

    from . import audit
    from .models import (
        ApiToken,
        Cluster,
        GpuType,
        Identity,
        Membership,
        Pool,
        SsoAccount,
        SsoGroupRule,
        Tenant,
    )

    pre_save.connect(audit.attribute, sender=LogEntry, dispatch_uid="factory.audit.attribute")
    audit.register(Tenant, exclude_fields=["created_at"])
    audit.register(Membership, exclude_fields=["created_at"])
    audit.register(Identity, exclude_fields=["updated_at"])
    audit.register(GpuType)
    audit.register(
        Cluster,
        exclude_fields=["health", "health_checked_at"],  # what the backend reports, not an admin's change
        mask_fields=["connection"],
        mask_callable="factory.audit.mask_connection",
    )
    audit.register(Pool, exclude_fields=list(Pool.SHAPE_FIELDS))
    audit.register(ApiToken, exclude_fields=["digest"])
    audit.register(SsoGroupRule, exclude_fields=["created_at"])
    audit.register(SsoAccount, include_fields=["user", "issuer", "subject"])
    audit.register(
        get_user_model(),
        include_fields=[
            "username",
            "first_name",
            "last_name",
            "email",
            "is_active",
            "is_staff",
            "is_superuser",
            "password",
        ],
        mask_fields=["password"],
        mask_callable="factory.audit.mask_all",
        m2m_fields={"groups", "user_permissions"},  # platform roles
    )
    audit.register(Group, include_fields=["name"], m2m_fields={"permissions"})


class PortalAdminConfig(admin_apps.AdminConfig):
    """django.contrib.admin with the portal's admin site (factory.admin_site)."""

    default = False  # factory's own config stays the app's default
    default_site = "factory.admin_site.PortalAdminSite"
