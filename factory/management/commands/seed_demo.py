"""Seed the demo: tenant demo-lab, GPU types h100 and a100 on one local cluster of 8 simulated GPUs,
and the users researcher, labadmin, platform and finance. Only `make run` calls this."""

from __future__ import annotations

import os

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from factory.choices import FINANCE_GROUP, ClusterKind, Role
from factory.models import Cluster, GpuType, Identity, Membership, Pool, Tenant
from factory.signals import demo_seeded

DEMO_USERS = [
    # username, role in demo-lab, staff, finance
    ("researcher", Role.MEMBER, False, False),
    ("labadmin", Role.ADMIN, False, False),
    ("platform", None, True, False),
    ("finance", None, False, True),
]
# Slurm runs each job as its owner's POSIX account: the test researchers scripts/slurm-dev-cluster makes.
DEMO_POSIX_ACCOUNTS = {"researcher": "aif-alice", "labadmin": "aif-bob"}


class Command(BaseCommand):
    help = "Create the demo tenant, cluster and users (development only)."

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
        self.stdout.write(self.style.SUCCESS("Demo data ready."))

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
        tenant, _ = Tenant.objects.get_or_create(
            slug="demo-lab", defaults={"name": "Demo Lab", "cost_center": "CC-1000"}
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
        finance, _ = Group.objects.get_or_create(name=FINANCE_GROUP)
        User = get_user_model()
        for username, role, staff, is_finance in DEMO_USERS:
            user, _ = User.objects.get_or_create(username=username)
            user.is_staff = user.is_superuser = staff
            user.set_password(password)
            user.save()
            if role:
                Membership.objects.update_or_create(user=user, tenant=tenant, defaults={"role": role})
            if is_finance:
                user.groups.add(finance)
        demo_seeded.send(self.__class__, tenant=tenant)
