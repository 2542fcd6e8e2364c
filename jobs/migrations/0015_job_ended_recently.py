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


def index(operation: str):
    """Run the schema editor's add_index or remove_index of INDEX, concurrently on PostgreSQL."""

    def run(apps, schema_editor):
        concurrently = {"concurrently": True} if schema_editor.connection.vendor == "postgresql" else {}
        getattr(schema_editor, operation)(apps.get_model("jobs", "Job"), INDEX, **concurrently)

    return run


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
            database_operations=[
                migrations.RunPython(index("add_index"), index("remove_index"), elidable=False)
            ],
        ),
    ]
