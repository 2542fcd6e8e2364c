from __future__ import annotations

from django.db import models


class Role(models.TextChoices):
    """A user's role in one tenant (an organisation, a department or a project): its admins are
    that level's admins (department admin, project admin)."""

    MEMBER = "member", "Member"
    ADMIN = "admin", "Tenant admin"


class PlatformRole(models.TextChoices):
    """Roles across the whole platform, each a Django group of this name holding the model
    permissions of factory.roles.GRANTS."""

    PLATFORM_ADMIN = "platform-admin", "Platform admin"
    FINANCE = "finance", "Finance"
    AUDITOR = "auditor", "Auditor"


# Where several group rules give one user roles in one tenant, the most powerful wins.
ROLE_POWER = {Role.MEMBER: 0, Role.ADMIN: 1}


class MembershipSource(models.TextChoices):
    """Who made a membership: a person (the admin, the API), or the single sign-on group rules,
    which also take away what they made when the user's groups no longer grant it."""

    MANUAL = "manual", "Added by hand"
    SSO = "sso", "Single sign-on group rule"


class ClusterKind(models.TextChoices):
    LOCAL = "local", "Local processes"
    SLURM = "slurm", "Slurm"
    KUBERNETES = "kubernetes", "Kubernetes"
    RAY = "ray", "Ray"


# Kinds that run each job as its owner's own POSIX account: a user without one set cannot use them.
POSIX_USER_KINDS = frozenset({ClusterKind.SLURM})
# Kinds whose backend starts a job on several nodes at once (a gang); the others run one-node jobs.
GANG_KINDS = frozenset({ClusterKind.SLURM, ClusterKind.KUBERNETES, ClusterKind.RAY})


class JoinState(models.TextChoices):
    PENDING = "pending", "Waiting for an admin"
    APPROVED = "approved", "Approved"
    DECLINED = "declined", "Declined"
