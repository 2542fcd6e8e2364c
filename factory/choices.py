from __future__ import annotations

from django.db import models


class Role(models.TextChoices):
    MEMBER = "member", "Member"
    ADMIN = "admin", "Tenant admin"


class ClusterKind(models.TextChoices):
    LOCAL = "local", "Local processes"
    SLURM = "slurm", "Slurm"
    KUBERNETES = "kubernetes", "Kubernetes"
    RAY = "ray", "Ray"


# Kinds that run each job as its owner's own POSIX account: a user without one set cannot use them.
POSIX_USER_KINDS = frozenset({ClusterKind.SLURM})

FINANCE_GROUP = "finance"
