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


FINANCE_GROUP = "finance"
