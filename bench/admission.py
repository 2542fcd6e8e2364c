"""Admission benchmark: 100 tenants, 4 GPU types, 3 clusters, 10,000 pending jobs on PostgreSQL.

Measures one full admission pass (quotas/admission.admit_pending), the latency of each admission
decision within it (the in-memory decision plus, for admitted jobs, their writes), and the SQL
queries per admitted job, at two queue sizes to show that it does not grow with the queue.

Usage: .venv/bin/python bench/admission.py [--jobs 10000] [--tenants 100]
Needs a local PostgreSQL (trust auth); creates and drops its own database. Last line: JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

from support import benchdb

ROOT = Path(__file__).resolve().parents[1]
DB_NAME = "factory_bench_admission"
BROKER = "redis://127.0.0.1:6379/13"


def setup_django() -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.update(
        DJANGO_SETTINGS_MODULE="factory.settings",
        DATABASE_URL=benchdb.url(DB_NAME),
        SECRET_KEY="bench-only-not-a-secret-" + "x" * 40,
        CELERY_TASK_ALWAYS_EAGER="0",
        REDIS_URL=BROKER,  # dispatch is enqueued on commit, as in production
        LOG_LEVEL="WARNING",
    )
    os.environ.pop("DEBUG", None)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def seed(tenants: int, jobs: int, rng: random.Random) -> None:
    from django.contrib.auth import get_user_model

    from factory.models import Cluster, GpuType, Membership, Pool, Tenant
    from quotas.models import Budget, Quota

    gpu_types = [GpuType.objects.create(slug=s, name=s) for s in ("h100", "h200", "a100", "l40s")]
    for i, region in enumerate(("eu", "us", "asia")):
        cluster = Cluster.objects.create(slug=f"c{i}", name=f"Cluster {i}", kind="local", region=region)
        for gpu_type in gpu_types:
            Pool.objects.create(cluster=cluster, gpu_type=gpu_type, capacity=64)
    user_model = get_user_model()
    tenant_rows = Tenant.objects.bulk_create(
        Tenant(slug=f"t{i:03d}", name=f"Tenant {i}", regions=["eu", "us"] if i % 10 == 0 else [])
        for i in range(tenants)
    )
    users = user_model.objects.bulk_create(user_model(username=f"u{i:03d}") for i in range(tenants))
    Membership.objects.bulk_create(
        Membership(user=u, tenant=t) for u, t in zip(users, tenant_rows, strict=True)
    )
    Quota.objects.bulk_create(
        Quota(
            tenant=t,
            gpu_type=g,
            nominal=rng.choice([0, 1, 2, 2, 4]),
            borrowing_limit=rng.choice([None, 4, 8]),
            max_gpus_per_job=8,
        )
        for t in tenant_rows
        for g in gpu_types
    )
    Budget.objects.bulk_create(
        Budget(tenant=t, gpu_hours_per_month=rng.choice([100, 500, 5000]), hard=True, max_priority=5)
        for t in tenant_rows[::3]
    )
    pending_jobs(tenant_rows, users, gpu_types, jobs, rng)


def pending_jobs(tenant_rows, owners, gpu_types, jobs: int, rng: random.Random) -> None:
    """`jobs` pending jobs spread over the tenants, a mix of sizes, time limits and priorities."""
    from django.utils import timezone

    from jobs.models import Job

    now = timezone.now()
    Job.objects.bulk_create(
        Job(
            tenant=tenant_rows[i % len(tenant_rows)],
            owner=owners[i % len(tenant_rows)],
            name=f"job-{i}",
            command="true",
            gpu_type=rng.choice(gpu_types),
            gpu_count=rng.choice([1, 1, 2, 4, 8]),
            time_limit_minutes=rng.choice([30, 60, 240]),
            priority=rng.choice([0, 0, 0, 5]),
            created_at=now - timedelta(seconds=jobs - i),
        )
        for i in range(jobs)
    )


class QueryCounter:
    """Counts SQL statements (Django's own query log keeps only the last 9,000)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, execute, sql, params, many, context):
        self.count += 1
        return execute(sql, params, many, context)


def measure_pass() -> dict:
    """One full pass: its time, every statement it ran, and each decision's latency."""
    from django.db import connection

    from quotas import admission

    counter = QueryCounter()
    with connection.execute_wrapper(counter):
        started = time.perf_counter()
        result = admission.admit_pending()
        elapsed = time.perf_counter() - started
    decisions_ms = sorted(s * 1000 for s in result.decision_seconds)
    return {
        "seconds": elapsed,
        "admitted": result.admitted,
        "waiting": result.waiting,
        "queries": counter.count,
        # Admissions are written in a fixed number of batched statements per pass, so this is the
        # pass's whole query count shared out, and it must not grow with the queue.
        "queries_per_admitted_job": counter.count / result.admitted if result.admitted else 0.0,
        "decision_p50_ms": statistics.median(decisions_ms) if decisions_ms else 0.0,
        "decision_p99_ms": decisions_ms[int(len(decisions_ms) * 0.99) - 1] if decisions_ms else 0.0,
    }


def run(tenants: int, jobs: int, seed_value: int) -> dict:
    benchdb.recreate(DB_NAME)
    try:
        setup_django()
        small = max(jobs // 5, 1)
        seed(tenants, small, random.Random(seed_value))
        small_pass = measure_pass()
        from jobs.models import Job

        Job.objects.all().delete()
        from quotas.models import Reservation

        Reservation.objects.all().delete()
        seed_more(tenants, jobs, random.Random(seed_value + 1))
        full = measure_pass()
        second = measure_pass()  # the steady state: nothing fits any more, reasons unchanged
        return {"small": small_pass, "full": full, "second": second, "small_jobs": small}
    finally:
        from django.db import connections

        connections.close_all()
        benchdb.drop(DB_NAME)
        import redis

        redis.Redis.from_url(BROKER).flushdb()


def seed_more(tenants: int, jobs: int, rng: random.Random) -> None:

    from factory.models import GpuType, Tenant

    gpu_types = list(GpuType.objects.all())
    tenant_rows = list(Tenant.objects.prefetch_related("members").order_by("slug"))
    owners = [t.members.first() for t in tenant_rows]
    pending_jobs(tenant_rows, owners, gpu_types, jobs, rng)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    figures = run(args.tenants, args.jobs, args.seed)
    small, full, second = figures["small"], figures["full"], figures["second"]
    print(
        f"{figures['small_jobs']:>6} pending: pass {small['seconds']:.3f} s, {small['admitted']} admitted, "
        f"{small['queries']} queries, {small['queries_per_admitted_job']:.1f} per admitted job"
    )
    print(
        f"{args.jobs:>6} pending: pass {full['seconds']:.3f} s, {full['admitted']} admitted, "
        f"{full['waiting']} waiting, {full['queries']} queries, "
        f"{full['queries_per_admitted_job']:.1f} per admitted job"
    )
    print(f"decisions: p50 {full['decision_p50_ms']:.3f} ms, p99 {full['decision_p99_ms']:.3f} ms")
    print(
        f"steady-state pass (nothing fits, reasons unchanged): {second['seconds']:.3f} s, "
        f"{second['queries']} queries"
    )
    print(
        json.dumps(
            {
                "decision_p99_ms": round(full["decision_p99_ms"], 3),
                "full_pass_s": round(full["seconds"], 3),
                "queries_per_admitted_job": round(full["queries_per_admitted_job"], 2),
                "queries_per_admitted_job_small_queue": round(small["queries_per_admitted_job"], 2),
                "admitted": full["admitted"],
                "pending": args.jobs,
                "steady_pass_s": round(second["seconds"], 3),
                "pass_queries": full["queries"],
            }
        )
    )


if __name__ == "__main__":
    main()
