"""Seal every job's secrets under the newest key of FACTORY_SECRET_KEYS (after adding a key in
front), so that the older keys can then be dropped."""

from __future__ import annotations

from django.core.management.base import BaseCommand
from django.db import transaction

from factory import sealing
from jobs.models import Job


class Command(BaseCommand):
    help = "Re-seal job secrets under the newest key of FACTORY_SECRET_KEYS."

    def handle(self, *args, **options) -> None:
        resealed = 0
        sealed = Job.objects.exclude(secrets_sealed="").values_list("pk", "secrets_sealed")
        for pk, value in sealed.iterator(chunk_size=500):
            with transaction.atomic():
                resealed += Job.objects.filter(pk=pk, secrets_sealed=value).update(
                    secrets_sealed=sealing.reseal(value)
                )
        self.stdout.write(f"resealed the secrets of {resealed} job(s)")
