"""Who may do what across the platform.

Two kinds of role:
- a tenant role, a user's Membership.role in one tenant: `member`, or `admin` of that tenant,
  whatever its level (an organisation, a department, a project);
- a platform role, across every tenant: platform admin, finance, auditor. Each is a Django group
  of that name (PlatformRole) holding the model permissions below, and the portal asks for a
  permission, never for a group or for `is_staff`: "may change clusters" is
  `user.has_perm("factory.change_cluster")`, "sees every job" is `user.has_perm("jobs.view_job")`.

Why Django's groups and permissions rather than a model of our own: the admin site already shows,
hides and refuses by these permissions (an auditor gets a read-only admin, finance sees billing
only), DRF's DjangoModelPermissions maps them onto the API's methods, `User.objects.with_perm`
finds who holds one, a site can add its own groups beside ours, and role changes are changes to
users' groups, which the audit trail records like any other. What each role holds is kept here, in
code, and written to the groups after every migration (`sync_groups`), so a deployment cannot
drift from it. Superusers hold every permission (break-glass accounts).
"""

from __future__ import annotations

from django.apps import apps as global_apps
from django.db import DEFAULT_DB_ALIAS

from .choices import PlatformRole

ALL = ("add", "change", "delete", "view")
VIEW = ("view",)

# What each platform role may do: (app label, or "app.model"), actions on its models.
GRANTS: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    # Clusters, pools and GPU types, tenants and their members, quotas and budgets, single sign-on
    # rules, users and their roles; reads the bill and the audit trail, sets no price.
    PlatformRole.PLATFORM_ADMIN: [
        ("factory", ALL),
        ("factory.apitoken", ("view", "delete")),
        ("factory.changeset", ("add", "view")),
        ("jobs", VIEW),
        ("jobs.job", ("view", "change", "add")),  # cancels any job, runs jobs in any tenant
        ("quotas", ALL),
        ("fleet", ALL),
        ("billing", VIEW),
        ("billing.gridintensity", ALL),
        ("auth.user", ALL),
        ("auth.group", VIEW),
        ("axes", ALL),  # lifts lockouts
        ("auditlog", VIEW),
    ],
    # Prices, the ledger's credits and corrections, month close, billing accounts; reads every
    # tenant's bill and budgets. Nothing of clusters, pools or GPU types beyond what anyone reads.
    PlatformRole.FINANCE: [
        ("billing", VIEW),
        ("billing.ratecard", ALL),
        ("billing.usagerecord", ("view", "add")),
        ("billing.monthclose", ("view", "add")),
        ("billing.billingaccount", ALL),
        ("quotas.budget", VIEW),
    ],
    # Reads everything, the audit trail included; changes nothing.
    PlatformRole.AUDITOR: [
        (app, VIEW) for app in ("factory", "jobs", "quotas", "billing", "fleet", "auth", "axes", "auditlog")
    ],
}

# The same permissions, as the rest of the portal names them.
VIEW_AUDIT_TRAIL = "auditlog.view_logentry"
APPLY_PLATFORM_FILES = "factory.add_changeset"


def _implied(grants: list[tuple[str, tuple[str, ...]]], app_label: str, model: str, codename: str) -> bool:
    for target, actions in grants:
        if target not in (app_label, f"{app_label}.{model}"):
            continue
        if any(codename == f"{action}_{model}" for action in actions):
            return True
    return False


def sync_groups(apps=global_apps, using: str = DEFAULT_DB_ALIAS) -> None:
    """Make each platform role's group exist and hold exactly the permissions of GRANTS."""
    group_model = apps.get_model("auth", "Group")
    permission_model = apps.get_model("auth", "Permission")
    permissions = list(
        permission_model.objects.using(using).values_list(
            "pk", "content_type__app_label", "content_type__model", "codename"
        )
    )
    for role, grants in GRANTS.items():
        group, _ = group_model.objects.using(using).get_or_create(name=role)
        wanted = {
            pk
            for pk, app_label, model, codename in permissions
            if _implied(grants, app_label, model, codename)
        }
        group.permissions.set(wanted)


def sync_groups_after_migrate(sender, app_config, apps=global_apps, using=DEFAULT_DB_ALIAS, **kwargs) -> None:
    """post_migrate receiver: once the last app's permissions exist (post_migrate is sent once
    per app, and each app's permissions are made when it is sent for that app)."""
    from auditlog.context import disable_auditlog

    last = [config for config in global_apps.get_app_configs() if config.models_module is not None][-1]
    if app_config.label != last.label:
        return
    with disable_auditlog():  # the code's own definition of the roles, not an admin's change
        sync_groups(apps, using)


def group_of(role: str):
    """The Django group of a platform role (made, with its permissions, if it is missing)."""
    from django.contrib.auth.models import Group

    group = Group.objects.filter(name=role).first()
    if group is None:
        sync_groups()
        group = Group.objects.get(name=role)
    return group


def grant(user, *roles: str) -> None:
    """Give `user` these platform roles."""
    user.groups.add(*(group_of(role) for role in roles))
    forget_permissions(user)


def forget_permissions(user) -> None:
    """Drop the permissions Django cached on this user object, after a change of roles."""
    for cache in ("_perm_cache", "_user_perm_cache", "_group_perm_cache", "_platform_roles"):
        user.__dict__.pop(cache, None)


def platform_roles(user) -> list[str]:
    """The platform roles `user` holds, by name, in PlatformRole's order; every one for a superuser."""
    if not user.is_authenticated or not user.is_active:
        return []
    if user.is_superuser:
        return list(PlatformRole.values)
    cached = user.__dict__.get("_platform_roles")
    if cached is None:
        names = set(user.groups.filter(name__in=PlatformRole.values).values_list("name", flat=True))
        cached = user.__dict__["_platform_roles"] = [role for role in PlatformRole.values if role in names]
    return cached


def enters_admin(user) -> bool:
    """The Django admin is for users who hold a permission there (a platform role, or a group a
    site made): what each sees in it is by permission."""
    return user.is_active and (user.is_superuser or bool(user.get_all_permissions()))
