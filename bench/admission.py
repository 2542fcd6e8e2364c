"""Admission benchmark: 100 tenants, 4 GPU types, 3 clusters, 10,000 pending jobs on PostgreSQL.

Measures one full admission pass (quotas/admission.admit_pending), the latency of each admission
decision within it (the in-memory decision plus, for admitted jobs, their writes), and the SQL
queries per admitted job, at two queue sizes to show that it does not grow with the queue.

With --gangs, also: 1,000 nodes of 8 GPUs across 3 Slurm clusters, under leaf switches of 32
nodes (the clusters' topology.conf), 5,000 pending jobs mixing one-GPU jobs and gangs of 2-64
whole nodes, quotas that do not bind. It adds the time of that pass (in a process that has made
one pass before, as a running scheduler has: modules loaded, broker connection open), the gangs
admitted without room for all their nodes (checked by packing the admitted jobs onto the nodes
again, independently of the pass), the GPUs allocated once the pass settles as a share of
capacity, the same share for a plain first-in-first-out placement of the same jobs (in
submission order, stopping at the first that does not fit), and the share of admitted gangs
placed under one switch.

With --hierarchy, also: an organisation of 50 departments × 20 projects (1,000 project tenants),
4 GPU types, quotas nested along the tree (each department's nominal covers its projects' and a
little of its own; some departments and projects with borrowing limits, some department budgets
that cap their projects together), 10,000 pending jobs over the projects. It adds the time of a
full pass, the p99 of its decisions, and the queries per admitted job at a fifth of the queue and
at the whole of it (constant: a pass writes in batches).

Usage: .venv/bin/python bench/admission.py [--jobs 10000] [--tenants 100] [--gangs] [--hierarchy]
Needs a local PostgreSQL (trust auth); creates and drops its own database. Last line: JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

from support import benchdb

ROOT = Path(__file__).resolve().parents[1]
DB_NAME = "factory_bench_admission"
BROKER = "redis://127.0.0.1:6379/13"


def setup_django(db_name: str = DB_NAME) -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.update(
        DJANGO_SETTINGS_MODULE="factory.settings",
        DATABASE_URL=benchdb.url(db_name),
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
    sizes = [rng.choice([1, 1, 2, 4, 8]) for _ in range(jobs)]
    Job.objects.bulk_create(
        Job(
            tenant=tenant_rows[i % len(tenant_rows)],
            owner=owners[i % len(tenant_rows)],
            name=f"job-{i}",
            command="true",
            gpu_type=rng.choice(gpu_types),
            gpu_count=sizes[i],
            gpus_per_node=sizes[i],
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
        started, cpu = time.perf_counter(), time.process_time()
        result = admission.admit_pending()
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    decisions_ms = sorted(s * 1000 for s in result.decision_seconds)
    return {
        "seconds": elapsed,
        # This process's share (the wall clock also counts PostgreSQL's work, and waiting for a
        # CPU on a busy machine).
        "cpu_seconds": cpu,
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


# --- gangs ---------------------------------------------------------------------------------------

GANG_NODES, GANG_CLUSTERS, GPUS_PER_NODE, GANG_JOBS, GANG_TENANTS = 1000, 3, 8, 5000, 20
NODES_PER_SWITCH = 32  # under each leaf switch, as in a scalable unit of 8-GPU nodes
WARM_UP_JOBS = 20
# Its own database: the default scenario's may be in use by another run.
GANG_DB_NAME = "factory_bench_admission_gangs"


def seed_gangs(rng: random.Random) -> None:
    """1,000 nodes of 8 h100 over 3 Slurm clusters (their shape and switches as a health check
    records them), 20 tenants whose quotas do not bind, 5,000 pending jobs: 70% one-GPU jobs,
    30% gangs of 2-64 whole nodes, in submission order."""
    from django.contrib.auth import get_user_model

    from factory.models import Cluster, GpuType, Identity, Membership, Pool, Tenant
    from quotas.models import Quota

    h100 = GpuType.objects.create(slug="h100", name="H100")
    for i in range(GANG_CLUSTERS):
        nodes = GANG_NODES // GANG_CLUSTERS + (1 if i < GANG_NODES % GANG_CLUSTERS else 0)
        names = [f"g{i}n{n:04d}" for n in range(nodes)]
        switches = {
            f"g{i}leaf{start // NODES_PER_SWITCH}": names[start : start + NODES_PER_SWITCH]
            for start in range(0, nodes, NODES_PER_SWITCH)
        }
        cluster = Cluster.objects.create(slug=f"g{i}", name=f"Gang cluster {i}", kind="slurm", region="eu")
        Pool.objects.create(
            cluster=cluster,
            gpu_type=h100,
            capacity=nodes * GPUS_PER_NODE,
            partition="gpu",
            node_count=nodes,
            node_gpus=GPUS_PER_NODE,
            node_cpus=64,
            node_memory_mb=1_000_000,
            topology={"level": "switch", "domains": switches},
        )
    capacity = GANG_NODES * GPUS_PER_NODE
    tenants = Tenant.objects.bulk_create(Tenant(slug=f"g{i:02d}", name=f"T{i}") for i in range(GANG_TENANTS))
    users = get_user_model().objects.bulk_create(
        get_user_model()(username=f"g{i:02d}") for i in range(GANG_TENANTS)
    )
    Membership.objects.bulk_create(Membership(user=u, tenant=t) for u, t in zip(users, tenants, strict=True))
    # Slurm runs each job as its owner's POSIX account: every owner has one.
    Identity.objects.bulk_create(Identity(user=u, posix_username=f"r{i:02d}") for i, u in enumerate(users))
    Quota.objects.bulk_create(
        Quota(tenant=t, gpu_type=h100, nominal=capacity // GANG_TENANTS, borrowing_limit=None)
        for t in tenants
    )
    warm_up(tenants, users, h100)
    shapes = [(1, 1) if rng.random() < 0.7 else (rng.randint(2, 64), GPUS_PER_NODE) for _ in range(GANG_JOBS)]
    gang_jobs(tenants, users, h100, shapes)


def gang_jobs(tenants, users, gpu_type, shapes: list[tuple[int, int]]) -> list:
    """Pending jobs of these (nodes, GPUs per node), in submission order, round the tenants."""
    from django.utils import timezone

    from jobs.models import Job

    now = timezone.now()
    return Job.objects.bulk_create(
        Job(
            tenant=tenants[i % GANG_TENANTS],
            owner=users[i % GANG_TENANTS],
            name=f"job-{i}",
            command="true",
            gpu_type=gpu_type,
            nodes=nodes,
            gpus_per_node=per_node,
            gpu_count=nodes * per_node,
            cpus=4,
            memory_gb=16,
            time_limit_minutes=60,
            created_at=now - timedelta(seconds=len(shapes) - i),
        )
        for i, (nodes, per_node) in enumerate(shapes)
    )


def warm_up(tenants, users, gpu_type) -> None:
    """A pass that admits and dispatches a few jobs, which are then gone again: the measured pass
    runs in a process as warm as a scheduler's that has made passes before (the backends' modules
    imported, the broker's connection open), as the default scenario's small pass makes it."""
    from jobs.models import Job
    from quotas import admission
    from quotas.models import Reservation

    jobs = gang_jobs(tenants, users, gpu_type, [(1, 1)] * (WARM_UP_JOBS - 2) + [(2, GPUS_PER_NODE)] * 2)
    admission.admit_pending()
    ids = [job.pk for job in jobs]
    Reservation.objects.filter(job_id__in=ids).delete()
    Job.objects.filter(pk__in=ids).delete()


def pool_nodes() -> dict[int, object]:
    """Every pool's nodes, all free (factory.shapes.FreeNodes), by cluster id."""
    from factory.models import Pool
    from factory.shapes import FreeNodes

    return {pool.cluster_id: FreeNodes.empty(pool.shape()) for pool in Pool.objects.all()}


def partial_gangs() -> tuple[int, int, int]:
    """(gangs admitted without room for all their nodes, GPUs allocated, capacity), by packing the
    admitted jobs onto each cluster's nodes again, largest per node first, apart from the pass."""
    from factory.models import Pool
    from jobs.choices import HOLDING_STATES
    from jobs.models import Job

    nodes = pool_nodes()
    partial = allocated = 0
    held = Job.objects.filter(state__in=HOLDING_STATES).order_by("-gpus_per_node", "-nodes", "pk")
    for cluster_id, count, per_node in held.values_list("cluster_id", "nodes", "gpus_per_node"):
        allocated += count * per_node
        if nodes[cluster_id].take(count, per_node) and count > 1:
            partial += 1
    capacity = sum(Pool.objects.values_list("capacity", flat=True))
    return partial, allocated, capacity


def greedy_fifo() -> int:
    """GPUs a plain first-in-first-out placement allocates: jobs in submission order, each on the
    first cluster with room for all its nodes, until one does not fit anywhere."""
    from jobs.models import Job

    nodes = pool_nodes()
    allocated = 0
    for count, per_node in Job.objects.order_by("created_at", "pk").values_list("nodes", "gpus_per_node"):
        where = next((free for free in nodes.values() if free.fits(count, per_node)), None)
        if where is None:
            break
        where.take(count, per_node)
        allocated += count * per_node
    return allocated


def under_one_switch() -> float:
    """The share of the admitted gangs that admission placed under one switch."""
    from jobs.choices import HOLDING_STATES
    from jobs.models import Job

    gangs = Job.objects.filter(state__in=HOLDING_STATES, nodes__gt=1)
    total = gangs.count()
    return gangs.exclude(topology_domain="").count() / total if total else 0.0


def run_gangs(seed_value: int) -> dict:
    global DB_NAME
    DB_NAME = GANG_DB_NAME
    benchdb.recreate(DB_NAME)
    try:
        setup_django()
        seed_gangs(random.Random(seed_value))
        figures = measure_pass()
        partial, allocated, capacity = partial_gangs()
        return {
            "pass": figures,
            "partial": partial,
            "utilisation": allocated / capacity,
            "fifo": greedy_fifo() / capacity,
            "under_one_switch": under_one_switch(),
        }
    finally:
        from django.db import connections

        connections.close_all()
        benchdb.drop(DB_NAME)
        import redis

        redis.Redis.from_url(BROKER).flushdb()


# --- hierarchy -----------------------------------------------------------------------------------

HIERARCHY_DB = "factory_bench_admission_hierarchy"
DEPARTMENTS, PROJECTS = 50, 20


def seed_hierarchy(jobs: int, rng: random.Random) -> None:
    """uni → 50 departments → 20 projects each; 4 GPU types on 3 clusters whose capacity is the
    organisation's nominal (about as many GPUs as the plain scenario: most projects borrow), and
    `jobs` pending jobs over the projects."""
    from django.contrib.auth import get_user_model

    from factory.models import Cluster, GpuType, Membership, Pool, Tenant
    from quotas.models import Budget, Quota

    gpu_types = [GpuType.objects.create(slug=s, name=s) for s in ("h100", "h200", "a100", "l40s")]
    org = Tenant.objects.create(slug="uni", name="University")
    departments = Tenant.objects.bulk_create(
        Tenant(slug=f"d{d:02d}", name=f"Department {d}", parent=org, cost_center=f"CC-{d:02d}")
        for d in range(DEPARTMENTS)
    )
    projects = Tenant.objects.bulk_create(
        Tenant(slug=f"d{d:02d}-p{p:02d}", name=f"Project {d}.{p}", parent=dept)
        for d, dept in enumerate(departments)
        for p in range(PROJECTS)
    )
    users = get_user_model().objects.bulk_create(
        get_user_model()(username=f"u{i:04d}") for i in range(len(projects))
    )
    Membership.objects.bulk_create(Membership(user=u, tenant=t) for u, t in zip(users, projects, strict=True))
    quotas, org_nominal = [], dict.fromkeys(gpu_types, 0)
    for d, dept in enumerate(departments):
        for gpu_type in gpu_types:
            mine = [int(rng.random() < 0.15) for _ in range(PROJECTS)]
            quotas += [
                Quota(
                    tenant=project,
                    gpu_type=gpu_type,
                    nominal=nominal,
                    borrowing_limit=rng.choice([None, 4, 8]),
                    max_gpus_per_job=8,
                )
                for project, nominal in zip(projects[d * PROJECTS : (d + 1) * PROJECTS], mine, strict=True)
            ]
            nominal = sum(mine) + rng.choice([0, 1, 2])
            quotas.append(
                Quota(tenant=dept, gpu_type=gpu_type, nominal=nominal, borrowing_limit=rng.choice([None, 16]))
            )
            org_nominal[gpu_type] += nominal
    quotas += [Quota(tenant=org, gpu_type=g, nominal=n) for g, n in org_nominal.items()]
    Quota.objects.bulk_create(quotas)
    for i, region in enumerate(("eu", "us", "asia")):
        cluster = Cluster.objects.create(slug=f"c{i}", name=f"Cluster {i}", kind="local", region=region)
        for gpu_type in gpu_types:
            Pool.objects.create(cluster=cluster, gpu_type=gpu_type, capacity=-(-org_nominal[gpu_type] // 3))
    Budget.objects.bulk_create(
        Budget(tenant=t, gpu_hours_per_month=rng.choice([2000, 10000]), hard=True, max_priority=5)
        for t in departments[::4]
    )
    Budget.objects.bulk_create(
        Budget(tenant=t, gpu_hours_per_month=rng.choice([100, 500]), hard=True, max_priority=5)
        for t in projects[::7]
    )
    pending_jobs(projects, users, gpu_types, jobs, rng)


def run_hierarchy(jobs: int, seed_value: int) -> dict:
    benchdb.recreate(HIERARCHY_DB)  # its own database: the plain scenario may run beside it
    try:
        setup_django(HIERARCHY_DB)
        from jobs.models import Job
        from quotas.models import Reservation

        small_jobs = max(jobs // 5, 1)
        seed_hierarchy(small_jobs, random.Random(seed_value))
        small = measure_pass()
        Reservation.objects.all().delete()
        Job.objects.all().delete()
        from django.contrib.auth import get_user_model

        from factory.models import GpuType, Tenant

        projects = list(Tenant.objects.filter(parent__parent__isnull=False).order_by("slug"))
        owners = list(get_user_model().objects.filter(username__startswith="u").order_by("username"))
        pending_jobs(projects, owners, list(GpuType.objects.all()), jobs, random.Random(seed_value + 1))
        full = measure_pass()
        return {"small": small, "full": full, "small_jobs": small_jobs}
    finally:
        from django.db import connections

        connections.close_all()
        benchdb.drop(HIERARCHY_DB)
        import redis

        redis.Redis.from_url(BROKER).flushdb()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--gangs", action="store_true", help="also the gang scenario (see above)")
    parser.add_argument("--only-gangs", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--hierarchy", action="store_true", help="also the tenant tree scenario (see above)")
    parser.add_argument("--only-hierarchy", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only_gangs:
        print(json.dumps(run_gangs(args.seed)))
        return
    if args.only_hierarchy:
        print(json.dumps(run_hierarchy(args.jobs, args.seed)))
        return
    hierarchy = None
    if args.hierarchy:
        child = [
            sys.executable,
            __file__,
            "--only-hierarchy",
            "--seed",
            str(args.seed),
            "--jobs",
            str(args.jobs),
        ]
        out = subprocess.run(child, check=True, capture_output=True, text=True).stdout
        hierarchy = json.loads(out.strip().splitlines()[-1])
    gangs = None
    if args.gangs:
        # In a process of its own: Django's database settings (and connection pool) are made once
        # per process, and each scenario makes and drops its database.
        child = [sys.executable, __file__, "--only-gangs", "--seed", str(args.seed)]
        out = subprocess.run(child, check=True, capture_output=True, text=True).stdout
        gangs = json.loads(out.strip().splitlines()[-1])
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
    extra = {}
    if gangs is not None:
        print(
            f"gangs: {GANG_JOBS} pending on {GANG_NODES} nodes of {GPUS_PER_NODE} GPUs: pass "
            f"{gangs['pass']['seconds']:.3f} s, {gangs['pass']['admitted']} admitted, "
            f"{gangs['partial']} partial gangs, GPUs allocated {gangs['utilisation']:.1%} "
            f"(plain FIFO: {gangs['fifo']:.1%}), gangs under one switch: {gangs['under_one_switch']:.1%}"
        )
        extra = {
            "full_pass_s_gangs": round(gangs["pass"]["seconds"], 3),
            "partial_gangs": gangs["partial"],
            "gpu_utilisation_after_pass": round(gangs["utilisation"], 4),
            "gpu_utilisation_greedy_fifo": round(gangs["fifo"], 4),
            "gangs_under_one_switch": round(gangs["under_one_switch"], 4),
            "pass_queries_gangs": gangs["pass"]["queries"],
        }
    if hierarchy is not None:
        tree, small_tree = hierarchy["full"], hierarchy["small"]
        print(
            f"hierarchy: {DEPARTMENTS} departments × {PROJECTS} projects, {args.jobs} pending: pass "
            f"{tree['seconds']:.3f} s, {tree['admitted']} admitted, {tree['waiting']} waiting, "
            f"{tree['queries']} queries, {tree['queries_per_admitted_job']:.2f} per admitted job "
            f"({small_tree['queries_per_admitted_job']:.2f} with {hierarchy['small_jobs']} pending); "
            f"decisions p50 {tree['decision_p50_ms']:.3f} ms, p99 {tree['decision_p99_ms']:.3f} ms"
        )
        extra |= {
            "full_pass_s_hierarchy": round(tree["seconds"], 3),
            "full_pass_cpu_s_hierarchy": round(tree["cpu_seconds"], 3),
            "full_pass_cpu_s": round(full["cpu_seconds"], 3),
            "load_average_1m": round(os.getloadavg()[0], 2),
            "decision_p99_ms_hierarchy": round(tree["decision_p99_ms"], 3),
            "queries_per_admitted_job_hierarchy": round(tree["queries_per_admitted_job"], 2),
            "queries_per_admitted_job_hierarchy_small_queue": round(
                small_tree["queries_per_admitted_job"], 2
            ),
            "pass_queries_hierarchy": tree["queries"],
            "pass_queries_hierarchy_small_queue": small_tree["queries"],
            "admitted_hierarchy": tree["admitted"],
        }
    print(
        json.dumps(
            {
                **extra,
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
