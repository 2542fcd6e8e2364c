from django.db import migrations, models


def mailed_before(apps, schema_editor):
    """Alerts recorded before mails went out by a task of their own were mailed at once."""
    BudgetAlert = apps.get_model("billing", "BudgetAlert")
    BudgetAlert.objects.exclude(recipients="").update(mailed_at=models.F("sent_at"))


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0002_ledger_line_per_period"),
    ]

    operations = [
        migrations.AddField(
            model_name="budgetalert",
            name="mailed_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.RunPython(mailed_before, migrations.RunPython.noop),
    ]
