"""One ledger line per job attempt and period, whatever its kind; corrections name the line they
correct.

The old unique key included the kind, so a part of a run metered as usage while its month was open
could be metered again as an adjustment once finance had closed that month. Existing lines are
kept, amounts untouched: in each job attempt's period that has several lines, the later ones are
linked to the first as its corrections (credits, time recorded as not charged, or, written before
this constraint, a second charge of the period: a linked line of a charged kind with positive
GPU-seconds, which finance may credit where it has not already).
"""

import django.db.models.deletion
from django.db import migrations, models

CHARGED = ["usage", "adjustment"]


def link_corrections(apps, schema_editor):
    UsageRecord = apps.get_model("billing", "UsageRecord")
    periods = (
        UsageRecord.objects.filter(job__isnull=False)
        .values("job_id", "attempt", "period_start")
        .annotate(lines=models.Count("id"), first=models.Min("id"))
        .filter(lines__gt=1)
    )
    charged_again = 0
    for period in periods.iterator():
        later = UsageRecord.objects.filter(
            job_id=period["job_id"],
            attempt=period["attempt"],
            period_start=period["period_start"],
            id__gt=period["first"],
        )
        charged_again += later.filter(kind__in=CHARGED, gpu_seconds__gt=0).count()
        later.update(corrects_id=period["first"])
    if charged_again:
        print(f"\n  {charged_again} ledger line(s) charged a job period a second time; linked, not changed.")


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0001_initial"),
    ]

    operations = [
        migrations.RemoveConstraint(
            model_name="usagerecord",
            name="one_ledger_line_per_job_period",
        ),
        migrations.AddField(
            model_name="usagerecord",
            name="corrects",
            field=models.ForeignKey(
                blank=True,
                help_text="The line of the same job attempt and period that this one corrects: a credit of its charge, or its time recorded as not charged.",
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="corrections",
                to="billing.usagerecord",
            ),
        ),
        migrations.RunPython(link_corrections, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name="usagerecord",
            constraint=models.UniqueConstraint(
                condition=models.Q(("corrects__isnull", True), ("job__isnull", False)),
                fields=("job", "attempt", "period_start"),
                name="one_ledger_line_per_job_period",
            ),
        ),
        migrations.AddConstraint(
            model_name="usagerecord",
            constraint=models.UniqueConstraint(
                condition=models.Q(("corrects__isnull", False)),
                fields=("corrects", "kind"),
                name="one_correction_per_line_and_kind",
            ),
        ),
    ]
