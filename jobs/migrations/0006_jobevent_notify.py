"""On PostgreSQL, committing job events sends NOTIFY job_events '<job id>' (once per job and
transaction), whichever code path wrote them: Job.record, a transition, a bulk_create of many jobs'
events, or SQL by hand. Open job pages are woken by it (jobs/live.py). Nothing on SQLite: there the
pages poll."""

from django.db import migrations

CREATE = [
    """
    CREATE OR REPLACE FUNCTION jobs_jobevent_notify() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('job_events', job_id::text) FROM (SELECT DISTINCT job_id FROM inserted) AS jobs;
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE TRIGGER jobs_jobevent_notify AFTER INSERT ON jobs_jobevent
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION jobs_jobevent_notify()
    """,
]
DROP = [
    "DROP TRIGGER IF EXISTS jobs_jobevent_notify ON jobs_jobevent",
    "DROP FUNCTION IF EXISTS jobs_jobevent_notify()",
]


def run(statements):
    def apply(apps, schema_editor):
        if schema_editor.connection.vendor == "postgresql":
            for sql in statements:
                schema_editor.execute(sql)

    return apply


class Migration(migrations.Migration):
    dependencies = [
        ("jobs", "0005_job_secrets"),
    ]

    operations = [migrations.RunPython(run(CREATE), run(DROP), elidable=False)]
