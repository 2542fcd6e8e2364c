"""Seed the demo: a department demo-dept with the project demo-lab, GPU types h100 and a100 on one
local cluster of 8 simulated GPUs, and one login per role. Only `make run` calls this; it prints
the logins."""

from __future__ import annotations

import os

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from factory import roles
from factory.choices import ClusterKind, PlatformRole, Role
from factory.models import Cluster, GpuType, Identity, Membership, Pool, Tenant
from factory.signals import demo_seeded

DEPARTMENT, PROJECT = "demo-dept", "demo-lab"
DEMO_USERS = [
    # username, {tenant: role}, platform roles, what the login shows
    ("researcher", {PROJECT: Role.MEMBER}, [], f"member of the project {PROJECT}"),
    ("labadmin", {PROJECT: Role.ADMIN}, [], f"project admin: admin of {PROJECT}"),
    ("deptadmin", {DEPARTMENT: Role.ADMIN}, [], f"department admin: admin of {DEPARTMENT}"),
    ("platform", {}, [PlatformRole.PLATFORM_ADMIN], "platform admin: clusters, tenants, quotas, roles"),
    ("finance", {}, [PlatformRole.FINANCE], "finance: prices, credits, month close, exports"),
    ("auditor", {}, [PlatformRole.AUDITOR], "auditor: reads everything and the audit trail, changes nothing"),
]
# Slurm runs each job as its owner's POSIX account: the test researchers scripts/slurm-dev-cluster makes.
DEMO_POSIX_ACCOUNTS = {"researcher": "aif-alice", "labadmin": "aif-bob"}


class Command(BaseCommand):
    help = "Create the demo tenants, cluster and users (development only) and print the logins."

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--with-slurm",
            action="store_true",
            help="Also register the local Slurm of scripts/slurm-dev-cluster (8 h100 in partition gpu).",
        )

    def handle(self, *args, **options) -> None:
        if not settings.DEBUG:
            raise CommandError("Demo users are only created with DEBUG=1 (the `make run` path).")
        password = os.environ.get("DEMO_PASSWORD") or "demo"
        with transaction.atomic():
            self.seed(password)
            if options["with_slurm"]:
                self.seed_slurm()
        self.stdout.write(f"  Logins (password: {password})")
        width = max(len(username) for username, *_ in DEMO_USERS)
        for username, _, _, shown in DEMO_USERS:
            self.stdout.write(f"    {username:<{width}}  {shown}")

    def seed_slurm(self) -> None:
        cluster, _ = Cluster.objects.get_or_create(
            slug="slurm-local",
            defaults={"name": "Local Slurm", "kind": ClusterKind.SLURM, "region": "local", "connection": {}},
        )
        h100 = GpuType.objects.get(slug="h100")
        Pool.objects.get_or_create(
            cluster=cluster, gpu_type=h100, defaults={"capacity": 8, "partition": "gpu"}
        )
        for username, posix_username in DEMO_POSIX_ACCOUNTS.items():
            user = get_user_model().objects.get(username=username)
            Identity.objects.get_or_create(user=user, defaults={"posix_username": posix_username})

    def seed(self, password: str) -> None:
        department, _ = Tenant.objects.get_or_create(
            slug=DEPARTMENT, defaults={"name": "Demo Department", "cost_center": "CC-1000"}
        )
        tenant, _ = Tenant.objects.get_or_create(
            slug=PROJECT, defaults={"name": "Demo Lab", "cost_center": "CC-1000", "parent": department}
        )
        h100, _ = GpuType.objects.get_or_create(
            slug="h100", defaults={"name": "NVIDIA H100 80GB", "memory_gb": 80, "board_power_watts": 700}
        )
        a100, _ = GpuType.objects.get_or_create(
            slug="a100", defaults={"name": "NVIDIA A100 80GB", "memory_gb": 80, "board_power_watts": 400}
        )
        cluster, _ = Cluster.objects.get_or_create(
            slug="local", defaults={"name": "This machine", "kind": ClusterKind.LOCAL, "region": "local"}
        )
        Pool.objects.get_or_create(cluster=cluster, gpu_type=h100, defaults={"capacity": 4})
        Pool.objects.get_or_create(cluster=cluster, gpu_type=a100, defaults={"capacity": 4})
        tenants = {DEPARTMENT: department, PROJECT: tenant}
        User = get_user_model()
        for username, memberships, platform_roles, _ in DEMO_USERS:
            user, _ = User.objects.get_or_create(username=username)
            user.is_staff = user.is_superuser = False  # roles, not flags, say what each may do
            user.set_password(password)
            user.save()
            for slug, role in memberships.items():
                Membership.objects.update_or_create(user=user, tenant=tenants[slug], defaults={"role": role})
            if platform_roles:
                roles.grant(user, *platform_roles)
        demo_seeded.send(self.__class__, tenant=tenant)
