"""An index of the jobs that ended, by when they last changed: metering's frequent safety-net pass
reads the recent ones without the whole history. Built CONCURRENTLY on PostgreSQL, so that a site
with millions of jobs keeps submitting and finishing them while it builds."""

from django.conf import settings
from django.db import migrations, models

INDEX = models.Index(
    condition=models.Q(("state__in", ["succeeded", "failed", "cancelled", "timed_out"])),
    fields=["updated_at"],
    name="job_ended_recently",
)


def create(apps, schema_editor):
    model = apps.get_model("jobs", "Job")
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.add_index(model, INDEX, concurrently=True)
    else:
        schema_editor.add_index(model, INDEX)


def drop(apps, schema_editor):
    model = apps.get_model("jobs", "Job")
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.remove_index(model, INDEX, concurrently=True)
    else:
        schema_editor.remove_index(model, INDEX)


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY runs outside a transaction

    dependencies = [
        ("factory", "0013_platform_roles"),
        ("jobs", "0014_job_arrays_and_placement"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.AddIndex(model_name="job", index=INDEX)],
            database_operations=[migrations.RunPython(create, drop, elidable=False)],
        ),
    ]
