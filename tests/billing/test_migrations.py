from __future__ import annotations

from decimal import Decimal

import pytest
from django.db import IntegrityError, connection, transaction
from django.db.migrations.executor import MigrationExecutor

from billing import immutable
from billing.models import UsageRecord

from .conftest import at

BEFORE = [("billing", "0001_initial")]
AFTER = [("billing", "0002_ledger_line_per_period")]


def migrate(targets):
    executor = MigrationExecutor(connection)
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


@pytest.mark.django_db(transaction=True)
def test_one_line_per_period_keeps_every_line_and_links_later_ones_to_the_first(ran, capsys):
    """A ledger written under the old key (job, attempt, period, kind), with a period charged twice
    across a month close and a platform failure's credit, migrates without a line changed or lost."""
    twice = ran(at(2026, 10, 31, 22), at(2026, 11, 1, 2))
    failed = ran(at(2026, 10, 31, 22), at(2026, 11, 1, 2))
    with transaction.atomic(), immutable.repairing():
        UsageRecord.objects.all().delete()  # metered on release: this test writes its own history
    try:
        old = migrate(BEFORE).get_model("billing", "UsageRecord")

        def line(job, start, end, kind, amount, seconds):
            return old.objects.create(
                job_id=job.pk,
                attempt=0,
                kind=kind,
                month=start.date().replace(day=1),
                period_start=start,
                period_end=end,
                tenant_id=job.tenant_id,
                cluster_id=job.cluster_id,
                gpu_type_id=job.gpu_type_id,
                gpus=1,
                gpu_seconds=seconds,
                amount=Decimal(amount),
            )

        october, november, end = at(2026, 10, 31, 22), at(2026, 11, 1), at(2026, 11, 1, 2)
        first = line(twice, october, november, "usage", "5.00", 7200)
        again = line(twice, october, november, "adjustment", "5.00", 7200)
        line(twice, november, end, "usage", "5.00", 7200)
        charged = line(failed, october, november, "usage", "5.00", 7200)
        credited = [
            line(failed, october, november, "platform_fault", "0", 7200),
            line(failed, october, november, "adjustment", "-5.00", -7200),
        ]
        line(failed, november, end, "platform_fault", "0", 7200)
        before = sorted(old.objects.values_list("id", "kind", "amount", "gpu_seconds"))
    finally:
        migrate(AFTER)
        migrate(MigrationExecutor(connection).loader.graph.leaf_nodes("billing"))  # what the models are now

    assert sorted(UsageRecord.objects.values_list("id", "kind", "amount", "gpu_seconds")) == before
    links = dict(UsageRecord.objects.filter(corrects__isnull=False).values_list("id", "corrects_id"))
    assert links == {again.pk: first.pk, credited[0].pk: charged.pk, credited[1].pk: charged.pk}
    assert "1 ledger line(s) charged a job period a second time" in capsys.readouterr().out
    duplicate = UsageRecord.objects.get(pk=first.pk)
    duplicate.pk, duplicate.kind = None, "adjustment"
    with pytest.raises(IntegrityError), transaction.atomic():
        duplicate.save(force_insert=True)
