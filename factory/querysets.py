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
    """The ids of the tenants `user` administers as a tenant admin, for `tenant_id__in=` (not for
    platform admins, who administer all)."""
    return RawSQL(_ADMINISTERED, [user.pk, Role.ADMIN])


def visible_ids(user) -> RawSQL:
    """The ids of the tenants `user` sees: those they belong to, and those they administer."""
    return RawSQL(_VISIBLE, [user.pk, Role.ADMIN, user.pk])


def sees_all_of(user, model) -> bool:
    """Whether `user` may see every row of `model`, of every tenant: its view permission (platform
    admins and auditors hold it for the models of tenants, finance for the ledger's)."""
    return user.has_perm(f"{model._meta.app_label}.view_{model._meta.model_name}")


def changes_all_of(user, model) -> bool:
    """Whether `user` administers every row of `model`, of every tenant: its change permission
    (platform admins; an auditor, who sees all, administers none)."""
    return user.has_perm(f"{model._meta.app_label}.change_{model._meta.model_name}")


class TenantQuerySet(models.QuerySet):
    def visible_to(self, user) -> TenantQuerySet:
        """Those who may view every tenant see every tenant; everybody else the tenants they
        belong to, and the tenants below those they administer."""
        if not user.is_authenticated:
            return self.none()
        if sees_all_of(user, self.model):
            return self
        return self.filter(pk__in=visible_ids(user))

    def submittable_by(self, user) -> TenantQuerySet:
        """The tenants `user` may run jobs in: their own, or any with the permission to add jobs
        (platform admins). Seeing a tenant is not enough: an auditor sees them all."""
        if not user.is_authenticated:
            return self.none()
        if user.has_perm("jobs.add_job"):
            return self
        return self.filter(pk__in=visible_ids(user))

    def administered_by(self, user) -> TenantQuerySet:
        """Those who may change every tenant (platform admins) administer every tenant; a tenant's
        admins administer it and every tenant below it."""
        if not user.is_authenticated:
            return self.none()
        if changes_all_of(user, self.model):
            return self
        return self.filter(pk__in=administered_ids(user))


def administers(user, tenant) -> bool:
    """Whether `user` may administer `tenant` (its members, its projects' members)."""
    from .models import Tenant

    return Tenant.objects.administered_by(user).filter(pk=tenant.pk).exists()


class TenantOwnedQuerySet(models.QuerySet):
    """Rows that belong to a tenant (memberships, jobs, quotas, budgets, ledger lines): the one rule
    of who may see them. Those with the model's view permission see all (factory.roles); everybody
    else the rows of the tenants they belong to and of the tenants below those they administer."""

    def sees_everything(self, user) -> bool:
        return sees_all_of(user, self.model)

    def visible_to(self, user) -> TenantOwnedQuerySet:
        if not user.is_authenticated:
            return self.none()
        if self.sees_everything(user):
            return self
        return self.filter(tenant_id__in=visible_ids(user))

    def administered_by(self, user) -> TenantOwnedQuerySet:
        if not user.is_authenticated:
            return self.none()
        if changes_all_of(user, self.model):
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

        for rule in self.filter(platform_role="").select_related("tenant"):
            for group in groups:
                slug = rule.tenant_slug_for(group)
                if slug == "":
                    keep(by_id, rule.tenant_id, rule.role)
                elif slug is not None:
                    keep(by_slug, slug, rule.role)
        for tenant_id, slug in Tenant.objects.filter(slug__in=by_slug).values_list("id", "slug"):
            keep(by_id, tenant_id, by_slug[slug])
        return by_id

    def platform_roles(self, groups: list[str]) -> set[str]:
        """The platform roles the rules give someone in `groups`."""
        return {
            rule.platform_role
            for rule in self.exclude(platform_role="")
            if any(rule.matches(group) for group in groups)
        }
