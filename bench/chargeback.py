"""Chargeback benchmark on PostgreSQL: 1,000 tenants, 10 million ledger lines in one month.

- report_s: the month's chargeback report (billing.reports.chargeback), best of three.
- csv_peak_rss_mb: peak RSS of a fresh process that streams the month's line-level FOCUS CSV export
  (all 10 million lines) through the same generator the API streams.
- invoice_close_s: closing the month (billing.invoicing.close_month): one invoice per billing
  account (each of the 1,000 tenants), built from all its lines, numbered, stored.
- focus_export_rows_per_s: ledger lines per second through the streaming FOCUS export (target
  50,000), whose peak RSS is csv_peak_rss_mb (target < 200 MB).
- metering_10k_s: metering 10,000 job completions through the batch metering path.

The ledger is generated inside PostgreSQL (INSERT ... SELECT generate_series) and its monthly
summary built from it once, as metering would have kept it line by line.
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


def seed(tenants: int, lines: int) -> None:
    from datetime import date
    from decimal import Decimal

    from django.core.management import call_command
    from django.db import connection

    from billing.models import GridIntensity, RateCard
    from factory.models import Cluster, GpuType, Pool, Tenant

    call_command("migrate", verbosity=0)
    gpu_types = [GpuType.objects.create(slug=s, name=s) for s in ("h100", "h200", "a100", "l40s")]
    clusters = [
        Cluster.objects.create(slug=f"c{i}", name=f"C{i}", kind="local", region="eu") for i in range(3)
    ]
    for cluster in clusters:
        for gpu_type in gpu_types:
            Pool.objects.create(cluster=cluster, gpu_type=gpu_type, capacity=64)
    for gpu_type in gpu_types:
        RateCard.objects.create(
            gpu_type=gpu_type,
            currency="EUR",
            price_per_gpu_hour=Decimal("2.37"),
            effective_from=date(2026, 1, 1),
        )
    GridIntensity.objects.create(region="eu", grams_co2e_per_kwh=Decimal("300"))
    Tenant.objects.bulk_create(
        Tenant(slug=f"t{i:04d}", name=f"Tenant {i}", cost_center=f"CC-{i % 50:03d}") for i in range(tenants)
    )
    first_tenant = Tenant.objects.order_by("pk").values_list("pk", flat=True).first()
    first_gpu, first_cluster = gpu_types[0].pk, clusters[0].pk
    started = time.perf_counter()
    with connection.cursor() as cursor:
        # Lines spread over the month; amounts are rounded per line like metering does.
        cursor.execute(
            f"""
            INSERT INTO billing_usagerecord (attempt, kind, month, period_start, period_end, tenant_id,
                cost_center, cluster_id, gpu_type_id, gpus, gpu_seconds, cpu_core_seconds, memory_gb_seconds,
                currency, amount, energy_kwh, co2e_kg, note, created_at)
            SELECT 0, 'usage', DATE '{MONTH}',
                TIMESTAMPTZ '{MONTH} 00:00Z' + (g % 2592000) * INTERVAL '1 second',
                TIMESTAMPTZ '{MONTH} 00:00Z' + (g % 2592000 + 600 + g % 7200) * INTERVAL '1 second',
                {first_tenant} + g % {tenants}, 'CC-' || lpad(((g % {tenants}) % 50)::text, 3, '0'),
                {first_cluster} + g % 3, {first_gpu} + g % 4, 1 + g % 8,
                (1 + g % 8) * (600 + g % 7200), 0, 0, 'EUR',
                round((1 + g % 8) * (600 + g % 7200) / 3600.0 * 2.37, 2),
                round((1 + g % 8) * (600 + g % 7200) / 3600.0 * 0.84, 4),
                round((1 + g % 8) * (600 + g % 7200) / 3600.0 * 0.252, 4), '', now()
            FROM generate_series(1, {lines}) AS g
            """
        )
        cursor.execute(
            """
            INSERT INTO billing_monthlysummary (month, tenant_id, cost_center, gpu_type_id, currency,
                gpu_seconds, charged_gpu_seconds, amount, energy_kwh, co2e_kg, lines, jobs)
            SELECT month, tenant_id, cost_center, gpu_type_id, currency, sum(gpu_seconds), sum(gpu_seconds),
                sum(amount), sum(energy_kwh), sum(co2e_kg), count(*), count(*)
            FROM billing_usagerecord GROUP BY month, tenant_id, cost_center, gpu_type_id, currency
            """
        )
        cursor.execute("ANALYZE")
    print(f"seeded {lines:,} lines in {time.perf_counter() - started:.1f} s", flush=True)


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
    """Stream the FOCUS export in a fresh process; return (seconds, peak RSS MB, bytes)."""
    code = f"""
import resource, sys, time
sys.path.insert(0, {str(ROOT)!r})
import django; django.setup()
from datetime import date
from billing.reports import focus_csv_stream
started = time.perf_counter()
size = sum(len(chunk) for chunk in focus_csv_stream(date.fromisoformat({MONTH!r})))
print(time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, size)
"""
    out = subprocess.run(
        [sys.executable, "-c", code], env=env(), capture_output=True, text=True, check=True
    ).stdout.split()
    return float(out[0]), float(out[1]), int(out[2])


def time_metering(jobs: int) -> float:
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
    end = timezone.now().replace(microsecond=0)
    Job.objects.bulk_create(
        Job(
            tenant=tenants[i % len(tenants)],
            owner=owner,
            name=f"j{i}",
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
    started = time.perf_counter()
    metered = metering.meter_finished(limit=jobs)
    elapsed = time.perf_counter() - started
    again = metering.meter_finished(limit=jobs)
    print(f"metered {metered} completions in {elapsed:.2f} s; a second run added {again}", flush=True)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=10_000_000)
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=10_000)
    args = parser.parse_args()
    benchdb.recreate(DB_NAME)
    try:
        setup_django()
        seed(args.tenants, args.lines)
        report_s, direct_s = time_report()
        close_s, invoices = time_close()
        export_s, peak_mb, size = export_in_child()
        print(f"FOCUS export: {size / 1e6:.0f} MB in {export_s:.1f} s, peak RSS {peak_mb:.0f} MB", flush=True)
        metering_s = time_metering(args.jobs)
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
                "lines": args.lines,
                "tenants": args.tenants,
                "report_from_lines_s": round(direct_s, 2),
                "csv_export_s": round(export_s, 1),
                "csv_bytes": size,
                "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
            }
        )
    )


if __name__ == "__main__":
    main()
