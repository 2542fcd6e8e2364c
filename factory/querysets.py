from __future__ import annotations

from django.db import models
from django.db.models.expressions import RawSQL
from django.utils import timezone

from .choices import Role

# The tenants a user administers: those where they are an admin, and every tenant below those (an
# admin of a department administers its projects). One recursive query, PostgreSQL and SQLite alike.
_ADMINISTERED = """
    WITH RECURSIVE administered(id) AS (
        SELECT tenant_id FROM factory_membership WHERE user_id = %s AND role = %s
        UNION
        SELECT t.id FROM factory_tenant t JOIN administered a ON t.parent_id = a.id
    )
    SELECT id FROM administered"""
_VISIBLE = _ADMINISTERED + " UNION SELECT tenant_id FROM factory_membership WHERE user_id = %s"


def administered_ids(user) -> RawSQL:
    """The ids of the tenants `user` administers, for `tenant_id__in=` (not for platform admins,
    who administer all)."""
    return RawSQL(_ADMINISTERED, [user.pk, Role.ADMIN])


def visible_ids(user) -> RawSQL:
    """The ids of the tenants `user` sees: those they belong to, and those they administer."""
    return RawSQL(_VISIBLE, [user.pk, Role.ADMIN, user.pk])


class TenantQuerySet(models.QuerySet):
    def visible_to(self, user) -> TenantQuerySet:
        """Platform admins see every tenant; everybody else the tenants they belong to, and the
        tenants below those they administer."""
        if not user.is_authenticated:
            return self.none()
        if user.is_staff:
            return self
        return self.filter(pk__in=visible_ids(user))

    def administered_by(self, user) -> TenantQuerySet:
        """Platform admins administer every tenant; a tenant's admins administer it and every
        tenant below it."""
        if not user.is_authenticated:
            return self.none()
        if user.is_staff:
            return self
        return self.filter(pk__in=administered_ids(user))


def administers(user, tenant) -> bool:
    """Whether `user` may administer `tenant` (its members, its projects' members)."""
    from .models import Tenant

    return Tenant.objects.administered_by(user).filter(pk=tenant.pk).exists()


class TenantOwnedQuerySet(models.QuerySet):
    """Rows that belong to a tenant (memberships, jobs, quotas, budgets, ledger lines): the one rule
    of who may see them. Platform admins see all; everybody else the rows of the tenants they belong
    to and of the tenants below those they administer."""

    def sees_everything(self, user) -> bool:
        return user.is_staff

    def visible_to(self, user) -> TenantOwnedQuerySet:
        if not user.is_authenticated:
            return self.none()
        if self.sees_everything(user):
            return self
        return self.filter(tenant_id__in=visible_ids(user))

    def administered_by(self, user) -> TenantOwnedQuerySet:
        if not user.is_authenticated:
            return self.none()
        if user.is_staff:
            return self
        return self.filter(tenant_id__in=administered_ids(user))


class IdentityQuerySet(models.QuerySet):
    def posix_username(self, user_id: int) -> str:
        """The POSIX account the user's jobs run as where jobs run as their owner; "" if none."""
        return self.filter(user_id=user_id).values_list("posix_username", flat=True).first() or ""


class ApiTokenQuerySet(models.QuerySet):
    def expired(self) -> ApiTokenQuerySet:
        return self.filter(expires_at__lte=timezone.now())


class SsoGroupRuleQuerySet(models.QuerySet):
    def grants(self, groups: list[str]) -> dict[int, str]:
        """The tenants (by id) whose membership the rules give to someone in `groups`, each with
        the most powerful role any rule gives there. A tenant a pattern names but that does not
        exist is no grant."""
        from .choices import ROLE_POWER
        from .models import Tenant

        by_slug: dict[str, str] = {}
        by_id: dict[int, str] = {}

        def keep(found: dict, key, role: str) -> None:
            if key not in found or ROLE_POWER[role] > ROLE_POWER[found[key]]:
                found[key] = role

        for rule in self.select_related("tenant"):
            for group in groups:
                slug = rule.tenant_slug_for(group)
                if slug == "":
                    keep(by_id, rule.tenant_id, rule.role)
                elif slug is not None:
                    keep(by_slug, slug, rule.role)
        for tenant_id, slug in Tenant.objects.filter(slug__in=by_slug).values_list("id", "slug"):
            keep(by_id, tenant_id, by_slug[slug])
        return by_id
