"""Chargeback benchmark on PostgreSQL: 1,000 tenants, 10 million ledger lines in one month.

- report_s: the month's chargeback report (billing.reports.chargeback), best of three.
- csv_peak_rss_mb: peak RSS of a fresh process that streams the month's line-level FOCUS CSV export
  (all 10 million lines) through the HTTP response the API returns.
- invoice_close_s: closing the month (billing.invoicing.close_month): one invoice per billing
  account (each of the 1,000 tenants), built from all its lines, numbered, stored.
- focus_export_rows_per_s: ledger lines per second through the streaming FOCUS export (target
  50,000), whose peak RSS is csv_peak_rss_mb (target < 200 MB).
- metering_10k_s: metering 10,000 job completions whose release was lost, by the safety net's
  frequent pass (billing.tasks.meter: the jobs changed within FACTORY_METERING_LOOKBACK, through
  their partial index), beside the ledger's million older jobs; metering_10k_full_pass_s: as many
  more by its full pass (billing.tasks.meter_all_finished), which reads every ended job, in the
  same run.

The ledger is that of finished jobs (a tenth as many as lines: each has several attempts), priced
by GPU-, CPU- and memory-hour. Jobs and lines are generated inside PostgreSQL, one INSERT ...
SELECT generate_series per table, loaded as the manual advises for bulk loads (indexes and
foreign keys made after the rows); the monthly summary is built from the lines once, as metering
would have kept it line by line.
Usage: .venv/bin/python bench/chargeback.py [--lines 10000000] [--tenants 1000]. Last line: JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from support import benchdb

ROOT = Path(__file__).resolve().parents[1]
DB_NAME = "factory_bench_chargeback"
MONTH = "2026-10-01"


def env() -> dict[str, str]:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "factory.settings",
        "DATABASE_URL": benchdb.url(DB_NAME),
        "SECRET_KEY": "bench-only-not-a-secret-" + "x" * 40,
        "REDIS_URL": "redis://127.0.0.1:6379/13",
        "LOG_LEVEL": "WARNING",
    }


def setup_django() -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.update(env())
    os.environ.pop("DEBUG", None)
    import django

    django.setup()


def seed(tenants: int, lines: int, jobs: int) -> None:
    """Prices, tenants, `jobs` finished jobs and their `lines` ledger lines (each job's attempts,
    spread over the month), generated inside PostgreSQL in one INSERT ... SELECT per table."""
    from datetime import date
    from decimal import Decimal

    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection

    from billing.models import GridIntensity, RateCard, UsageRecord
    from factory.models import Cluster, GpuType, Pool, Tenant
    from jobs.models import Job

    call_command("migrate", verbosity=0)
    gpu_types = [GpuType.objects.create(slug=s, name=s) for s in ("h100", "h200", "a100", "l40s")]
    clusters = [
        Cluster.objects.create(slug=f"c{i}", name=f"C{i}", kind="local", region="eu") for i in range(3)
    ]
    for cluster in clusters:
        for gpu_type in gpu_types:
            Pool.objects.create(cluster=cluster, gpu_type=gpu_type, capacity=64)
    cards = [
        RateCard.objects.create(
            gpu_type=gpu_type,
            currency="EUR",
            price_per_gpu_hour=Decimal("2.37"),
            price_per_cpu_core_hour=Decimal("0.01"),
            price_per_memory_gb_hour=Decimal("0.002"),
            effective_from=date(2026, 1, 1),
        )
        for gpu_type in gpu_types
    ]
    GridIntensity.objects.create(region="eu", grams_co2e_per_kwh=Decimal("300"))
    Tenant.objects.bulk_create(
        Tenant(slug=f"t{i:04d}", name=f"Tenant {i}", cost_center=f"CC-{i % 50:03d}") for i in range(tenants)
    )
    owner = get_user_model().objects.create(username="researcher")
    first_tenant = Tenant.objects.order_by("pk").values_list("pk", flat=True).first()

    def pick(objects, index: str) -> str:
        return f"(ARRAY[{', '.join(str(o.pk) for o in objects)}])[1 + ({index}) % {len(objects)}]"

    # A job j (0-based, id j + 1) has the lines g = j, j + jobs, j + 2 * jobs, ...: its attempts.
    start = f"TIMESTAMPTZ '{MONTH} 00:00Z' + (g % 2592000) * INTERVAL '1 second'"
    end = f"TIMESTAMPTZ '{MONTH} 00:00Z' + (g % 2592000 + 600 + g % 7200) * INTERVAL '1 second'"
    gpus = "(1 + j % 8)"
    gpu_hours = f"({gpus} * (600 + g % 7200) / 3600.0)"
    started = time.perf_counter()
    with connection.cursor() as cursor:
        with benchdb.bulk_load(cursor, "jobs_job"):
            insert_select(
                cursor,
                Job,
                {
                    "id": "j + 1",
                    "uid": "gen_random_uuid()",
                    "name": "'train-' || j",
                    "command": "'python train.py'",
                    "tenant_id": f"{first_tenant} + j % {tenants}",
                    "owner_id": str(owner.pk),
                    "gpu_type_id": pick(gpu_types, "j"),
                    "cluster_id": pick(clusters, "j"),
                    "gpu_count": gpus,
                    "gpus_per_node": gpus,
                    "nodes": "1",
                    "cpus": f"8 * {gpus}",
                    "memory_gb": f"64 * {gpus}",
                    "time_limit_minutes": "600",
                    "priority": "0",
                    "state": "'succeeded'",
                    "exit_code": "0",
                    "attempt": "a",
                    "started_at": start,
                    "ended_at": end,
                    "updated_at": end,  # ended in October: history, not lately
                },
                f"FROM generate_series(0, {jobs - 1}) AS j, "
                f"LATERAL (SELECT ({lines} - 1 - j) / {jobs} AS a) AS last, "  # its last attempt
                f"LATERAL (SELECT j + a * {jobs} AS g) AS line",
            )
            cursor.execute("SELECT setval(pg_get_serial_sequence('jobs_job', 'id'), %s)", [jobs])
        print(f"seeded {jobs:,} jobs in {time.perf_counter() - started:.1f} s", flush=True)
        with benchdb.bulk_load(cursor, "billing_usagerecord"):
            insert_select(
                cursor,
                UsageRecord,
                {
                    "job_id": "j + 1",
                    "attempt": "g / " + str(jobs),
                    "kind": "'usage'",
                    "month": f"DATE '{MONTH}'",
                    "period_start": start,
                    "period_end": end,
                    "tenant_id": f"{first_tenant} + j % {tenants}",
                    "cost_center": f"'CC-' || lpad((j % {tenants} % 50)::text, 3, '0')",
                    "cluster_id": pick(clusters, "j"),
                    "gpu_type_id": pick(gpu_types, "j"),
                    "rate_card_id": pick(cards, "j"),
                    "gpus": gpus,
                    "gpu_seconds": f"{gpus} * (600 + g % 7200)",
                    "cpu_core_seconds": f"8 * {gpus} * (600 + g % 7200)",
                    "memory_gb_seconds": f"64 * {gpus} * (600 + g % 7200)",
                    "currency": "'EUR'",
                    # 2.37 a GPU-hour, 8 cores at 0.01 and 64 GB at 0.002 with each GPU.
                    "amount": f"round({gpu_hours} * 2.578, 2)",
                    "energy_kwh": f"round({gpu_hours} * 0.84, 4)",
                    "co2e_kg": f"round({gpu_hours} * 0.252, 4)",
                },
                f"FROM generate_series(0, {lines - 1}) AS g, LATERAL (SELECT g % {jobs} AS j) AS job",
            )
        print(f"seeded {lines:,} lines in {time.perf_counter() - started:.1f} s", flush=True)
        # The monthly summary, as metering would have kept it line by line.
        cursor.execute(
            """
            INSERT INTO billing_monthlysummary (month, tenant_id, cost_center, gpu_type_id, currency,
                gpu_seconds, charged_gpu_seconds, amount, energy_kwh, co2e_kg, lines, jobs)
            SELECT month, tenant_id, cost_center, gpu_type_id, currency, sum(gpu_seconds), sum(gpu_seconds),
                sum(amount), sum(energy_kwh), sum(co2e_kg), count(*), count(*) FILTER (WHERE attempt = 0)
            FROM billing_usagerecord GROUP BY month, tenant_id, cost_center, gpu_type_id, currency
            """
        )
        cursor.execute("ANALYZE")
    print(f"seeded in {time.perf_counter() - started:.1f} s", flush=True)


def insert_select(cursor, model, given: dict[str, str], source: str) -> None:
    """INSERT ... SELECT of generated rows: `given` maps columns to SQL expressions; every other
    NOT NULL column takes its model field's default, so the bench keeps up with new fields."""
    from django.db import connection
    from django.utils import timezone

    columns, values, params = [], [], []
    for field in model._meta.concrete_fields:
        if field.column in given:
            columns.append(field.column)
            values.append(given[field.column].replace("%", "%%"))
        elif not field.null and not field.primary_key:
            columns.append(field.column)
            values.append("%s")
            value = timezone.now() if getattr(field, "auto_now", False) else field.get_default()
            params.append(field.get_db_prep_save(value, connection))
    cursor.execute(
        f"INSERT INTO {model._meta.db_table} ({', '.join(columns)}) "
        f"SELECT {', '.join(values)} {source.replace('%', '%%')}",
        params,
    )


def time_report() -> tuple[float, float]:
    from datetime import date

    from django.db import connection

    from billing.reports import chargeback

    timings = []
    for _ in range(3):
        started = time.perf_counter()
        report = chargeback(date.fromisoformat(MONTH))
        timings.append(time.perf_counter() - started)
    print(f"report: {len(report.rows)} rows, total {report.totals}, best {min(timings):.3f} s", flush=True)
    started = time.perf_counter()
    with connection.cursor() as cursor:  # the same totals straight from the lines, for comparison
        cursor.execute(
            "SELECT tenant_id, cost_center, gpu_type_id, currency, sum(amount), sum(gpu_seconds), count(*) "
            "FROM billing_usagerecord WHERE month = %s GROUP BY 1, 2, 3, 4",
            [MONTH],
        )
        from_lines = cursor.fetchall()
    direct = time.perf_counter() - started
    assert sum(row[4] for row in from_lines) == sum(report.totals.values()), "summary and ledger disagree"
    print(f"same report aggregated from the 10M lines: {direct:.2f} s (reconciles to the cent)", flush=True)
    return min(timings), direct


def time_close() -> tuple[float, int]:
    from datetime import date

    from billing.invoicing import close_month
    from billing.models import Invoice

    started = time.perf_counter()
    close_month(date.fromisoformat(MONTH), None)
    elapsed = time.perf_counter() - started
    invoices = Invoice.objects.filter(month=MONTH).count()
    print(f"closed the month: {invoices} invoices in {elapsed:.1f} s", flush=True)
    return elapsed, invoices


def export_in_child() -> tuple[float, float, int]:
    """Stream the FOCUS export's HTTP response in a fresh process; return (seconds, peak RSS MB,
    bytes)."""
    code = f"""
import resource, sys, time
sys.path.insert(0, {str(ROOT)!r})
import django; django.setup()
from datetime import date
from billing.views import export_response
started = time.perf_counter()
response = export_response(date.fromisoformat({MONTH!r}), "focus")  # what the API streams
size = sum(len(chunk) for chunk in response.streaming_content)
print(time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, size)
"""
    out = subprocess.run(
        [sys.executable, "-c", code], env=env(), capture_output=True, text=True, check=True
    ).stdout.split()
    return float(out[0]), float(out[1]), int(out[2])


def time_metering(jobs: int) -> tuple[float, float]:
    """`jobs` completions whose release metering was lost, metered by the safety net's frequent
    pass (jobs changed within FACTORY_METERING_LOOKBACK, as billing.tasks.meter runs it); then as
    many more by its full pass over every ended job (billing.tasks.meter_all_finished), in the
    same run: (frequent, full) seconds."""
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from billing import metering
    from factory.models import Cluster, GpuType, Tenant
    from jobs.choices import JobState
    from jobs.models import Job

    owner = get_user_model().objects.create(username="bench")
    tenants = list(Tenant.objects.all()[:100])
    gpu_types = list(GpuType.objects.all())
    cluster = Cluster.objects.first()

    def completions(prefix: str) -> None:
        end = timezone.now().replace(microsecond=0)
        Job.objects.bulk_create(
            Job(
                tenant=tenants[i % len(tenants)],
                owner=owner,
                name=f"{prefix}{i}",
                command="true",
                gpu_type=gpu_types[i % 4],
                gpu_count=1 + i % 4,
                gpus_per_node=1 + i % 4,
                time_limit_minutes=600,
                cluster=cluster,
                state=JobState.SUCCEEDED,
                started_at=end - timedelta(minutes=5 + i % 300),
                ended_at=end,
                exit_code=0,
            )
            for i in range(jobs)
        )

    timings = []
    for prefix, since in (
        ("recent", timezone.now() - timedelta(seconds=settings.FACTORY_METERING_LOOKBACK)),
        ("full", None),
    ):
        completions(prefix)
        started = time.perf_counter()
        metered = metering.meter_finished(limit=jobs, since=since)
        timings.append(time.perf_counter() - started)
        again = metering.meter_finished(limit=jobs)
        print(
            f"{prefix} pass: {metered} completions metered in {timings[-1]:.2f} s, then {again} more",
            flush=True,
        )
    return timings[0], timings[1]


def main() -> None:
    global DB_NAME
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=10_000_000)
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--lines-per-job", type=int, default=10, help="attempts per job in the ledger")
    parser.add_argument("--jobs", type=int, default=10_000, help="completions metered")
    parser.add_argument("--database", default=DB_NAME, help="the throwaway database's name")
    args = parser.parse_args()
    DB_NAME = args.database
    benchdb.recreate(DB_NAME)
    try:
        setup_django()
        seed(args.tenants, args.lines, -(-args.lines // args.lines_per_job))
        report_s, direct_s = time_report()
        close_s, invoices = time_close()
        load_before = os.getloadavg()[0]
        export_s, peak_mb, size = export_in_child()
        # The machine is shared: how busy it was says how far the rate is the export's own.
        load = (round(load_before, 1), round(os.getloadavg()[0], 1))
        print(
            f"FOCUS export: {size / 1e6:.0f} MB in {export_s:.1f} s, peak RSS {peak_mb:.0f} MB, "
            f"load average {load[0]} -> {load[1]} on {os.cpu_count()} CPUs",
            flush=True,
        )
        metering_s, metering_full_s = time_metering(args.jobs)
    finally:
        from django.db import connections

        connections.close_all()
        benchdb.drop(DB_NAME)
    print(
        json.dumps(
            {
                "report_s": round(report_s, 4),
                "invoice_close_s": round(close_s, 2),
                "invoices": invoices,
                "focus_export_rows_per_s": round(args.lines / export_s),
                "csv_peak_rss_mb": round(peak_mb, 1),
                "metering_10k_s": round(metering_s, 3),
                "metering_10k_full_pass_s": round(metering_full_s, 3),
                "lines": args.lines,
                "tenants": args.tenants,
                "report_from_lines_s": round(direct_s, 2),
                "csv_export_s": round(export_s, 1),
                "csv_bytes": size,
                "export_load_avg_1m": load,
                "cpus": os.cpu_count(),
                "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
            }
        )
    )


if __name__ == "__main__":
    main()
