"""Every telemetry cycle rewrites each GPU's latest sample and each running job's energy row. On
PostgreSQL, pages of these tables are left half empty (fillfactor 50) so that the new version of a
row goes beside the old one without touching its indexes (a heap-only tuple update): at 8,000
GPUs the cycle's UPDATE of fleet_gpu took 0.8 s with full pages, each new row version written to
all eight of its indexes."""

from django.db import migrations

TABLES = ("fleet_gpu", "fleet_jobgpuenergy")


def leave_room(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        for table in TABLES:
            schema_editor.execute(f"ALTER TABLE {table} SET (fillfactor = 50)")


def fill_up(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        for table in TABLES:
            schema_editor.execute(f"ALTER TABLE {table} RESET (fillfactor)")


class Migration(migrations.Migration):
    dependencies = [("fleet", "0001_fleet")]

    operations = [migrations.RunPython(leave_room, fill_up, elidable=False)]
