"""Tenants and their members, users' identities outside the portal, GPU types, clusters and their
capacity pools; API tokens."""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator, RegexValidator
from django.db import models
from django.utils import timezone

from .adapters.base import POSIX_USERNAME_PATTERN
from .choices import ClusterKind, JoinState, MembershipSource, PlatformRole, Role
from .querysets import (
    ApiTokenQuerySet,
    IdentityQuerySet,
    SsoGroupRuleQuerySet,
    TenantOwnedQuerySet,
    TenantQuerySet,
)
from .shapes import NodeShape

slug_validator = RegexValidator(
    r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$",
    "Use 1-63 lowercase letters, digits and hyphens, starting and ending with a letter or digit.",
)

posix_username_validator = RegexValidator(
    POSIX_USERNAME_PATTERN,
    "Use 1-32 lowercase letters, digits, underscores and hyphens, starting with a letter or underscore.",
)


def validate_not_root(value: str) -> None:
    if value == "root":
        raise ValidationError("Jobs never run as root.")


class Tenant(models.Model):
    """A team or project that shares the factory; the unit of quota, budget and bill."""

    slug = models.SlugField(max_length=63, unique=True, validators=[slug_validator])
    name = models.CharField(max_length=200)
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="children"
    )
    cost_center = models.CharField(max_length=64, blank=True)
    regions = models.JSONField(
        default=list, blank=True, help_text="Regions this tenant's jobs may run in; empty means any."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, through="Membership", related_name="tenants")

    objects = TenantQuerySet.as_manager()

    class Meta:
        ordering = ["slug"]
        constraints = [
            # Longer loops are refused by a trigger (PostgreSQL) and by clean(): factory.hierarchy.
            models.CheckConstraint(
                condition=models.Q(parent__isnull=True) | ~models.Q(parent=models.F("pk")),
                name="tenant_not_its_own_parent",
            )
        ]

    def __str__(self) -> str:
        return self.slug

    def clean(self) -> None:
        from .hierarchy import check_parent

        if not isinstance(self.regions, list) or not all(isinstance(r, str) and r for r in self.regions):
            raise ValidationError({"regions": "Give a list of region names."})
        if self.parent_id is not None and self.parent_id == self.pk:
            raise ValidationError({"parent": "A tenant cannot be its own parent."})
        check_parent(self, self.parent)


class Membership(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    source = models.CharField(
        max_length=8,
        choices=MembershipSource.choices,
        default=MembershipSource.MANUAL,
        help_text="Memberships from single sign-on rules are updated and removed at each sign-in.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    objects = TenantOwnedQuerySet.as_manager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "tenant"], name="one_membership_per_tenant")]
        ordering = ["tenant__slug", "user__username"]

    def __str__(self) -> str:
        return f"{self.user} in {self.tenant} ({self.role})"

    def get_additional_data(self) -> dict | None:
        """What the audit trail notes beside a change: a membership the single sign-on rules made."""
        return {"source": self.source} if self.source == MembershipSource.SSO else None


class JoinRequest(models.Model):
    """A user asks to join a tenant; one of its admins (or a platform admin) approves or declines."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="join_requests")
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="join_requests")
    message = models.CharField(max_length=500, blank=True)
    state = models.CharField(max_length=16, choices=JoinState.choices, default=JoinState.PENDING)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["user", "tenant"],
                condition=models.Q(state="pending"),
                name="one_pending_join_request",
            )
        ]

    def __str__(self) -> str:
        return f"{self.user} → {self.tenant} ({self.state})"


class Identity(models.Model):
    """Who a portal user is outside the portal: the POSIX account their jobs run as on clusters
    that run each job as its owner (Slurm). Platform admins set it, or single sign-on from a claim
    at each sign-in; a user without one cannot use those clusters."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="identity")
    posix_username = models.CharField(
        "POSIX username",
        max_length=32,
        blank=True,
        validators=[posix_username_validator, validate_not_root],
        help_text="The user's own account on the clusters' hosts; their Slurm jobs run as it.",
    )
    updated_at = models.DateTimeField(auto_now=True)

    objects = IdentityQuerySet.as_manager()

    class Meta:
        constraints = [
            # Two portal users sharing one account could read and cancel each other's jobs.
            models.UniqueConstraint(
                fields=["posix_username"],
                condition=~models.Q(posix_username=""),
                name="one_user_per_posix_account",
            )
        ]
        ordering = ["user__username"]
        verbose_name_plural = "identities"

    def __str__(self) -> str:
        return f"{self.user}: {self.posix_username or 'no POSIX account'}"


class GpuType(models.Model):
    slug = models.SlugField(max_length=32, unique=True, validators=[slug_validator])
    name = models.CharField(max_length=100)
    memory_gb = models.PositiveIntegerField(default=80)
    board_power_watts = models.PositiveIntegerField(default=700, help_text="Used for energy estimates.")

    class Meta:
        ordering = ["slug"]
        verbose_name = "GPU type"

    def __str__(self) -> str:
        return self.slug


class Cluster(models.Model):
    slug = models.SlugField(max_length=63, unique=True, validators=[slug_validator])
    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=16, choices=ClusterKind.choices)
    region = models.CharField(max_length=64, default="local")
    connection = models.JSONField(
        default=dict, blank=True, help_text="Backend connection settings; checked by the backend's schema."
    )
    pue = models.DecimalField(
        "PUE",
        max_digits=4,
        decimal_places=2,
        default=Decimal("1.20"),
        validators=[MinValueValidator(Decimal("1.00"))],
        help_text="Power usage effectiveness of the data centre, for energy estimates.",
    )
    enabled = models.BooleanField(default=True)
    draining = models.BooleanField(default=False, help_text="Running jobs finish; no new jobs are placed.")
    health = models.JSONField(default=dict, blank=True, editable=False)
    health_checked_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug

    def clean(self) -> None:
        from .adapters import adapter_class

        try:
            adapter_class(self.kind).parse_connection(self.connection or {})
        except ValueError as exc:
            raise ValidationError({"connection": str(exc)}) from None

    @property
    def accepts_jobs(self) -> bool:
        return self.enabled and not self.draining

    def adapter(self):
        from .adapters import adapter_for

        return adapter_for(self)

    def record_health(self, health, adapter=None) -> None:
        """Keep what a health check found: its report, and each pool's node shape as the backend
        describes it (a pool the backend says nothing of keeps the shape it had)."""
        now = timezone.now()
        Cluster.objects.filter(pk=self.pk).update(health=health.as_dict(), health_checked_at=now)
        self.health, self.health_checked_at = health.as_dict(), now
        if not health.ok or adapter is None:
            return
        reported = {p.gpu_type: p for p in health.pools}
        for pool in self.pools.select_related("gpu_type"):
            found = reported.get(adapter.health_key(pool))
            if found is None or not found.nodes or not found.gpus_per_node:
                continue
            pool.record_shape(found)


class Pool(models.Model):
    """The GPUs of one type on one cluster, and where the backend finds them."""

    cluster = models.ForeignKey(Cluster, on_delete=models.CASCADE, related_name="pools")
    gpu_type = models.ForeignKey(GpuType, on_delete=models.PROTECT, related_name="pools")
    capacity = models.PositiveIntegerField(validators=[MinValueValidator(1)])
    partition = models.CharField(max_length=64, blank=True, help_text="Slurm partition.")
    node_selector = models.JSONField(default=dict, blank=True, help_text="Kubernetes node selector.")
    # The pool's node shape, as its backend last reported it with the cluster's health (its
    # largest node, and how many nodes have these GPUs); empty until then. Admission places a job
    # only where each of its nodes fits on one of these; submission refuses what never could.
    node_count = models.PositiveIntegerField(null=True, blank=True, editable=False)
    node_gpus = models.PositiveIntegerField("GPUs per node", null=True, blank=True, editable=False)
    node_cpus = models.PositiveIntegerField("CPUs per node", null=True, blank=True, editable=False)
    node_memory_mb = models.PositiveIntegerField(
        "memory per node (MB)", null=True, blank=True, editable=False
    )
    # Where the site describes its topology, the pool's nodes by the domain they share, as the
    # backend reported it with the cluster's health: {"level": "switch" or a node label,
    # "domains": {domain: [node names]}} (empty: not described). Admission keeps a gang within
    # one domain where one has room for it, and the backend is told to as well.
    topology = models.JSONField(default=dict, blank=True, editable=False)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["cluster", "gpu_type"], name="one_pool_per_gpu_type")]
        ordering = ["cluster__slug", "gpu_type__slug"]

    def __str__(self) -> str:
        return f"{self.cluster}/{self.gpu_type} ({self.capacity})"

    SHAPE_FIELDS = ("node_count", "node_gpus", "node_cpus", "node_memory_mb", "topology")

    def record_shape(self, health) -> bool:
        """Take the node shape a backend reported (a PoolHealth), with its topology; saved only
        when it changed."""
        if health.topology_level is None:  # not read this time
            topology = self.topology
        elif health.topology_level and health.domains:
            topology = {
                "level": health.topology_level,
                "domains": {name: list(nodes) for name, nodes in sorted(health.domains.items())},
            }
        else:
            topology = {}
        shape = {
            "node_count": health.nodes,
            "node_gpus": health.gpus_per_node,
            "node_cpus": health.cpus_per_node,
            "node_memory_mb": health.memory_mb_per_node,
            "topology": topology,
        }
        if all(getattr(self, name) == value for name, value in shape.items()):
            return False
        for name, value in shape.items():
            setattr(self, name, value)
        self.save(update_fields=list(self.SHAPE_FIELDS))
        return True

    def shape(self) -> NodeShape:
        return NodeShape(
            capacity=self.capacity,
            node_count=self.node_count,
            node_gpus=self.node_gpus,
            node_cpus=self.node_cpus,
            node_memory_mb=self.node_memory_mb,
            domains={
                domain: tuple(nodes) for domain, nodes in (self.topology or {}).get("domains", {}).items()
            },
            level=(self.topology or {}).get("level", ""),
        )

    @property
    def topology_level(self) -> str:
        """What the pool's topology domains are ("switch", a node label); "" if not described."""
        return (self.topology or {}).get("level", "")


class ChangeSet(models.Model):
    """Changes made together, as one, by one author: an applied platform file. Its `changes` are
    the plan it applied (field by field, secrets never shown); the audit logs of the apps above
    (quota changes) point at it."""

    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    source = models.CharField(max_length=300, blank=True, help_text="The file or directory applied.")
    digest = models.CharField(max_length=64, blank=True, help_text="SHA-256 of the declaration applied.")
    summary = models.JSONField(default=dict, help_text="How many objects were created, changed, deleted.")
    changes = models.JSONField(default=list)
    applied_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-applied_at", "-id"]

    def __str__(self) -> str:
        counts = ", ".join(f"{n} {action}" for action, n in self.summary.items())
        return f"change set {self.pk} by {self.author or 'nobody'}: {counts or 'no changes'}"


def token_digest(key: str) -> str:
    """What is stored of an API token. A token is 256 random bits, so a plain SHA-256 cannot be
    reversed or guessed; a slow password hash would cost every API request its time."""
    return hashlib.sha256(key.encode()).hexdigest()


class ApiToken(models.Model):
    """A user's API token, for `Authorization: Token <token>`. Only its digest is kept: the token
    itself is shown once, when it is made. A user may hold several (one per machine or script),
    each named, each with an expiry, each revoked by deleting it."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, blank=True)
    digest = models.CharField(max_length=64, unique=True, editable=False)
    # The token's first characters, which tell a user's tokens apart without giving one away.
    prefix = models.CharField(max_length=8, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    expires_at = models.DateTimeField()

    objects = ApiTokenQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.name or 'token'} ({self.prefix}…) of {self.user}"

    @classmethod
    def issue(cls, user, *, name: str = "", days: int | None = None) -> tuple[ApiToken, str]:
        """A new token for `user`, valid for `days` (FACTORY_TOKEN_DAYS by default); returns the
        row and the token, which nothing can read back later. The user's expired tokens go."""
        key = secrets.token_hex(32)
        now = timezone.now()
        cls.objects.filter(user=user).expired().delete()
        token = cls.objects.create(
            user=user,
            name=name,
            digest=token_digest(key),
            prefix=key[:8],
            created_at=now,
            expires_at=now + timedelta(days=days or settings.FACTORY_TOKEN_DAYS),
        )
        return token, key

    @property
    def expired(self) -> bool:
        return self.expires_at <= timezone.now()


class SsoAccount(models.Model):
    """A portal user's account at the site's OpenID provider. A sign-in finds its user by the
    provider's subject and issuer only: an e-mail address or a user name may be reassigned or
    chosen by someone else, a subject never."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="sso_accounts")
    issuer = models.CharField(max_length=255)
    subject = models.CharField(max_length=255)
    groups = models.JSONField(
        default=list,
        blank=True,
        editable=False,
        help_text="The groups the provider gave at the last sign-in.",
    )
    platform_roles = models.JSONField(
        default=list,
        blank=True,
        editable=False,
        help_text="The platform roles single sign-on group rules gave this user (and take away when "
        "no rule gives them any more); roles given by hand are not listed.",
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    last_login_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["issuer", "subject"], name="one_user_per_sso_subject")]
        ordering = ["user__username"]
        verbose_name = "single sign-on account"

    def __str__(self) -> str:
        return f"{self.user} = {self.subject} at {self.issuer}"


class SsoGroupRule(models.Model):
    """A group at the identity provider that makes its members members (or admins) of a tenant,
    or gives them a platform role (platform admin, finance, auditor), applied at every single
    sign-on: leaving the group takes the membership or role away at the next one. A pattern may
    name the tenant itself, e.g. `gpu-(?P<tenant>[a-z0-9-]+)-admins`."""

    group = models.CharField(
        max_length=200,
        help_text="The group's name as the provider sends it; with “pattern”, a regular expression "
        "the whole name must match.",
    )
    is_pattern = models.BooleanField("pattern", default=False)
    tenant = models.ForeignKey(
        Tenant,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="sso_group_rules",
        help_text="Leave empty for a pattern with a (?P<tenant>…) group: the tenant whose slug it captures.",
    )
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    platform_role = models.CharField(
        max_length=16,
        choices=PlatformRole.choices,
        blank=True,
        help_text="Instead of a tenant: the platform role the group's members hold (leave the tenant empty).",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    objects = SsoGroupRuleQuerySet.as_manager()

    class Meta:
        ordering = ["group", "tenant__slug"]
        verbose_name = "single sign-on group rule"

    def __str__(self) -> str:
        if self.platform_role:
            return f"{self.group} → {self.get_platform_role_display()}"
        return f"{self.group} → {self.get_role_display()} of {self.tenant or '(captured tenant)'}"

    def clean(self) -> None:
        if self.platform_role:
            self._clean_platform_rule()
            return
        if not self.is_pattern:
            if self.tenant_id is None:
                raise ValidationError({"tenant": "Name the tenant this group's members join."})
            return
        try:
            pattern = re.compile(self.group)
        except re.error as exc:
            raise ValidationError({"group": f"Not a regular expression: {exc}."}) from None
        captures_tenant = "tenant" in pattern.groupindex
        if self.tenant_id is None and not captures_tenant:
            raise ValidationError(
                {"tenant": "Name a tenant, or capture its slug in the pattern with (?P<tenant>…)."}
            )
        if self.tenant_id is not None and captures_tenant:
            raise ValidationError({"tenant": "The pattern captures the tenant: leave this empty."})

    def _clean_platform_rule(self) -> None:
        if self.tenant_id is not None:
            raise ValidationError(
                {"tenant": "A rule gives a platform role or a tenant role, not both: leave the tenant empty."}
            )
        if not self.is_pattern:
            return
        try:
            pattern = re.compile(self.group)
        except re.error as exc:
            raise ValidationError({"group": f"Not a regular expression: {exc}."}) from None
        if "tenant" in pattern.groupindex:
            raise ValidationError(
                {"group": "A platform role is no tenant's: the pattern captures no tenant."}
            )

    def matches(self, group: str) -> bool:
        if not self.is_pattern:
            return group == self.group
        try:
            return re.fullmatch(self.group, group) is not None
        except re.error:
            return False

    def tenant_slug_for(self, group: str) -> str | None:
        """The slug of the tenant `group` joins by this rule ("" for the rule's own tenant), or
        None when the rule does not apply to it."""
        if not self.is_pattern:
            return "" if group == self.group else None
        try:
            match = re.fullmatch(self.group, group)
        except re.error:
            return None
        if match is None:
            return None
        return "" if self.tenant_id is not None else match.group("tenant")
