from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("jobs", "0003_job_platform_fault"),
    ]

    operations = [
        migrations.RenameField(
            model_name="job",
            old_name="dispatch_attempted_at",
            new_name="dispatch_enqueued_at",
        ),
        migrations.AddField(
            model_name="job",
            name="cancel_enqueued_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="job",
            name="dispatch_claim",
            field=models.CharField(blank=True, max_length=32),
        ),
        migrations.AddField(
            model_name="job",
            name="dispatch_failures",
            field=models.PositiveIntegerField(
                default=0, help_text="Dispatches of this attempt that failed unexpectedly."
            ),
        ),
        migrations.AddField(
            model_name="job",
            name="dispatch_lease_until",
            field=models.DateTimeField(blank=True, null=True),
        ),
    ]
