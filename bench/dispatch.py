"""How fast the portal hands jobs to a backend, and what a status sync of 1,000 jobs costs.

    .venv/bin/python bench/dispatch.py --backend kubernetes [--jobs 1000] [--cycles 5]

Self-contained: it creates a fresh PostgreSQL database (`factory_bench_dispatch`), sets
DATABASE_URL to it before Django starts, migrates it and seeds a tenant, a GPU type and one
cluster of the chosen backend; at the end it drops the database. Celery uses an in-memory broker:
nothing is enqueued on the measured paths, and no worker runs.

Each backend is a function in BACKENDS that brings up its backend and measures through the real
adapter, on the portal's own code paths:
- dispatch: `jobs.dispatch.dispatch(job)` for each of N admitted jobs, one after another, as a
  worker would (adapter.submit, then the job's transition to submitted, with its event row);
- sync: `jobs.dispatch.sync_cluster(cluster)` with the N jobs active: first the cycle that moves
  them all to running, then steady cycles where nothing changes, then one where a tenth failed;
- calls: requests the backend received per sync cycle, which must not grow with N.

kubernetes: the HTTP fake of the API server from the tests (tests/integration/k8s_fake.py) runs
in a thread of this process, reached through the official client over real HTTP. It shares this
process's GIL, so its own time serving the requests is measured and printed beside the totals.

ray: a real local Ray head (tests/integration/ray_head.py), reached over HTTP as in production.
Only 4 of the jobs run (4 logical GPUs); the rest wait in Ray as PENDING, since a running Ray job
costs two processes. Calls and the time spent waiting for Ray are counted at RayDashboard.request.

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DB_NAME = "factory_bench_dispatch"
DATABASE_URL = f"postgresql://postgres@127.0.0.1:5432/{DB_NAME}"
TENANT = "bench-lab"
GPU_PRODUCT = "NVIDIA-H100-80GB-HBM3"


def log(message: str) -> None:
    print(message, flush=True)


# --- database and Django --------------------------------------------------------------------------


def recreate_database() -> None:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DB_NAME}")


def drop_database() -> None:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")


@contextlib.contextmanager
def portal_database() -> Iterator[None]:
    """Django set up on a fresh bench database, dropped afterwards."""
    log(f"Creating database {DB_NAME} and migrating ...")
    recreate_database()
    try:
        with tempfile.TemporaryDirectory(prefix="factory-bench-dispatch-") as tmp:
            setup_django(Path(tmp))
            yield
    finally:
        if "django.db" in sys.modules:
            from django.db import connections

            connections.close_all()
        drop_database()


def setup_django(var_dir: Path) -> None:
    os.environ.update(
        DATABASE_URL=DATABASE_URL,
        SECRET_KEY="bench-only-not-a-secret-" + "x" * 40,
        DEBUG="0",
        CELERY_BROKER_URL="memory://localhost/",  # tasks enqueued on the way (admission) go nowhere
        FACTORY_VAR_DIR=str(var_dir),
        LOG_LEVEL="WARNING",
        DJANGO_SETTINGS_MODULE="factory.settings",
    )
    os.environ.pop("REDIS_URL", None)
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0, interactive=False)


def seed(kind: str, connection: dict, node_selector: dict):
    """A tenant with a member, one GPU type and one cluster of `kind` with a pool of it."""
    from django.contrib.auth import get_user_model

    from factory.choices import Role
    from factory.models import Cluster, GpuType, Membership, Pool, Tenant

    tenant = Tenant.objects.create(slug=TENANT, name="Bench Lab")
    h100 = GpuType.objects.create(slug="h100", name="NVIDIA H100 80GB", memory_gb=80, board_power_watts=700)
    cluster = Cluster.objects.create(slug=f"bench-{kind}", name="Bench", kind=kind, connection=connection)
    cluster.full_clean()
    Pool.objects.create(cluster=cluster, gpu_type=h100, capacity=100_000, node_selector=node_selector)
    user = get_user_model().objects.create_user("bench")
    Membership.objects.create(user=user, tenant=tenant, role=Role.MEMBER)
    return tenant, user, h100, cluster


def admitted_jobs(count: int, tenant, user, gpu_type, cluster, image: str) -> list:
    """N jobs already admitted to the cluster; made in bulk, since admission is not measured."""
    from django.utils import timezone

    from jobs.choices import JobState
    from jobs.models import Job

    now = timezone.now()
    Job.objects.bulk_create(
        Job(
            tenant=tenant,
            owner=user,
            name=f"bench-{i}",
            command="python train.py",
            image=image,
            gpu_type=gpu_type,
            gpu_count=1,
            cpus=4,
            memory_gb=16,
            time_limit_minutes=60,
            state=JobState.ADMITTED,
            cluster=cluster,
            admitted_at=now,
        )
        for i in range(count)
    )
    return list(
        Job.objects.filter(cluster=cluster).select_related("cluster", "gpu_type", "tenant").order_by("id")
    )


# --- measuring --------------------------------------------------------------------------------------


def dispatch_all(jobs: list) -> float:
    """Seconds to dispatch every job through the portal's dispatch path, one after another."""
    from jobs import dispatch
    from jobs.choices import JobState

    started = time.perf_counter()
    for job in jobs:
        dispatch.dispatch(job)
    elapsed = time.perf_counter() - started
    not_submitted = [job.pk for job in jobs if job.state != JobState.SUBMITTED]
    if not_submitted:
        raise RuntimeError(f"{len(not_submitted)} job(s) were not submitted, e.g. job {not_submitted[0]}")
    return elapsed


def timed_sync(cluster, fake) -> dict:
    """One sync cycle: its wall time, jobs changed, backend calls and the backend's serving time."""
    from jobs import dispatch

    calls, served = fake.calls(), fake.seconds
    started = time.perf_counter()
    changed = dispatch.sync_cluster(cluster)
    return {
        "seconds": time.perf_counter() - started,
        "changed": changed,
        "calls": fake.calls() - calls,
        "server_seconds": fake.seconds - served,
    }


# --- backends ---------------------------------------------------------------------------------------


def bench_kubernetes(args: argparse.Namespace) -> dict:
    import yaml

    from tests.integration.k8s_fake import FakeKubernetes

    with portal_database():
        fake = TimedFake(FakeKubernetes().start_server())
        try:
            connection = {"kubeconfig": yaml.safe_dump(fake.fake.kubeconfig())}
            tenant, user, h100, cluster = seed(
                "kubernetes", connection, {"nvidia.com/gpu.product": GPU_PRODUCT}
            )
            image = "nvcr.io/nvidia/pytorch:24.05-py3"
            jobs = admitted_jobs(args.jobs, tenant, user, h100, cluster, image=image)
            log(f"kubernetes: fake API server at {fake.fake.url}; dispatching {len(jobs)} jobs ...")
            result = {"backend": "kubernetes", "jobs": len(jobs)}
            result.update(measure_kubernetes_dispatch(fake, jobs))
            result.update(measure_kubernetes_syncs(fake, cluster, jobs, args.cycles))
            return result
        finally:
            fake.fake.stop_server()


class TimedFake:
    """The fake API server, with the time it spends serving requests added up (it runs in this
    process, under the same GIL as the client being measured)."""

    def __init__(self, fake) -> None:
        self.fake = fake
        self.seconds = 0.0
        serve = fake.handle

        def timed(request):
            started = time.perf_counter()
            try:
                return serve(request)
            finally:
                self.seconds += time.perf_counter() - started

        fake.handle = timed

    def calls(self) -> int:
        return len(self.fake.requests)


def measure_kubernetes_dispatch(fake: TimedFake, jobs: list) -> dict:
    calls, served = fake.calls(), fake.seconds
    seconds = dispatch_all(jobs)
    per_job_ms = 1000 * seconds / len(jobs)
    server_ms = 1000 * (fake.seconds - served) / len(jobs)
    log(
        f"  dispatch: {len(jobs) / seconds:.1f} jobs/s, {per_job_ms:.2f} ms each (fake server "
        f"{server_ms:.2f} ms of it); {fake.calls() - calls} API calls (the namespace is made on the way)"
    )
    return {
        "portal_jobs_per_s": round(len(jobs) / seconds, 1),
        "dispatch_ms_per_job": round(per_job_ms, 2),
        "dispatch_fake_server_ms_per_job": round(server_ms, 2),
    }


def measure_kubernetes_syncs(fake: TimedFake, cluster, jobs: list, cycles: int) -> dict:
    from jobs.choices import JobState
    from jobs.models import Job

    for job in jobs:  # the job controller starts them all
        fake.fake.start(job.external_id)
    first = timed_sync(cluster, fake)
    log(
        f"  first sync: {first['seconds']:.3f} s; {first['changed']} jobs to running; "
        f"{first['calls']} call(s)"
    )
    steady = [timed_sync(cluster, fake) for _ in range(cycles)]
    if any(cycle["changed"] for cycle in steady):
        raise RuntimeError("a steady sync cycle changed jobs")
    steady_s = statistics.median(c["seconds"] for c in steady)
    server_s = statistics.median(c["server_seconds"] for c in steady)
    log(
        f"  steady sync of {len(jobs)} active jobs: median {steady_s:.3f} s over {cycles} cycles "
        f"(fake server {server_s:.3f} s of it); calls per cycle {[c['calls'] for c in steady]}"
    )
    failing = jobs[: max(1, len(jobs) // 10)]
    for i, job in enumerate(failing):
        fake.fake.fail(job.external_id, exit_code=1 + i % 100)
    failures = timed_sync(cluster, fake)
    with_codes = Job.objects.filter(cluster=cluster, state=JobState.FAILED, exit_code__isnull=False).count()
    log(
        f"  sync with {len(failing)} new failures: {failures['seconds']:.3f} s; {failures['calls']} calls; "
        f"{with_codes} jobs failed with their exit codes"
    )
    return {
        f"sync_s_{len(jobs)}": round(steady_s, 3),
        "sync_fake_server_s": round(server_s, 3),
        "sync_first_s": round(first["seconds"], 3),
        "sync_with_failures_s": round(failures["seconds"], 3),
        "sync_calls_per_cycle": max(c["calls"] for c in [first, failures, *steady]),
    }


def bench_ray(args: argparse.Namespace) -> dict:
    """ray: a real local Ray head (tests/integration/ray_head.py) with 4 logical GPUs. Every job asks
    for one GPU and sleeps, so 4 run and the rest wait in Ray as PENDING. A waiting Ray job costs no
    process; a running one costs a supervisor actor and a driver (about 0.1 GB and a slice of a core
    each), so 1,000 running jobs do not fit on 2 cores. The syncs still list 1,000 real Ray jobs."""
    from tests.integration.ray_head import RayHead

    head = RayHead(num_gpus=RAY_GPUS, num_cpus=64, start_timeout_s=24 * 3600)
    log("ray: starting a local Ray head ...")
    head.start()
    try:
        with portal_database(), RayCalls() as calls:
            connection = {"address": head.address, "timeout": 60}
            tenant, user, h100, cluster = seed("ray", connection, {})
            jobs = ray_jobs(args.jobs, tenant, user, h100, cluster)
            log(f"ray: head at {head.address} with {RAY_GPUS} GPUs; dispatching {len(jobs)} jobs ...")
            result = {"backend": "ray", "jobs": len(jobs), "ray_running": RAY_GPUS}
            result["ray_pending"] = len(jobs) - RAY_GPUS
            result["note"] = "all jobs are real Ray jobs; only 4 run at once on 2 cores, the rest are PENDING"
            result.update(measure_ray_dispatch(calls, jobs))
            wait_for_ray_running(head, RAY_GPUS)
            result.update(measure_ray_syncs(calls, head, cluster, jobs, args.cycles))
            return result
    finally:
        head.stop()


RAY_GPUS = 4


def ray_jobs(count: int, tenant, user, gpu_type, cluster) -> list:
    """Admitted jobs that hold a GPU for a long time and ask for little memory (the head offers
    about 16 GB of Ray's `memory` resource)."""
    from jobs.models import Job

    admitted_jobs(count, tenant, user, gpu_type, cluster, image="")
    Job.objects.filter(cluster=cluster).update(command="sleep 3600", cpus=1, memory_gb=1)
    return list(
        Job.objects.filter(cluster=cluster).select_related("cluster", "gpu_type", "tenant").order_by("id")
    )


class RayCalls:
    """Counts the adapter's requests to the Ray head and the time spent waiting for answers."""

    def __enter__(self) -> RayCalls:
        from factory.adapters.ray import RayDashboard

        self.count = 0
        self.seconds = 0.0
        self.dashboard_class = RayDashboard
        self.original = RayDashboard.request
        counter = self

        def request(dashboard, method, path, body=None):
            started = time.perf_counter()
            try:
                return counter.original(dashboard, method, path, body)
            finally:
                counter.count += 1
                counter.seconds += time.perf_counter() - started

        RayDashboard.request = request
        return self

    def __exit__(self, *exc) -> None:
        self.dashboard_class.request = self.original

    def calls(self) -> int:
        return self.count


def measure_ray_dispatch(calls: RayCalls, jobs: list) -> dict:
    count, waited = calls.count, calls.seconds
    seconds = dispatch_all(jobs)
    per_job_ms = 1000 * seconds / len(jobs)
    ray_ms = 1000 * (calls.seconds - waited) / len(jobs)
    log(
        f"  dispatch: {len(jobs) / seconds:.1f} jobs/s, {per_job_ms:.2f} ms each (waiting for Ray "
        f"{ray_ms:.2f} ms of it); {calls.count - count} requests (a lookup, then the submission)"
    )
    return {
        "portal_jobs_per_s": round(len(jobs) / seconds, 1),
        "dispatch_ms_per_job": round(per_job_ms, 2),
        "dispatch_ray_ms_per_job": round(ray_ms, 2),
    }


def wait_for_ray_running(head, count: int, timeout: float = 120.0) -> None:
    """Until Ray runs the jobs that got GPUs, so the first sync has them to report."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{head.address}/api/jobs/", timeout=60) as response:
            if sum(job["status"] == "RUNNING" for job in json.load(response)) >= count:
                return
        time.sleep(0.5)
    raise RuntimeError(f"Ray did not start {count} jobs within {timeout:g} s")


def measure_ray_syncs(calls: RayCalls, head, cluster, jobs: list, cycles: int) -> dict:
    import urllib.request

    first = timed_sync(cluster, calls)
    log(
        f"  first sync: {first['seconds']:.3f} s; {first['changed']} jobs changed (running, or "
        f"their waiting reason set); {first['calls']} call(s)"
    )
    steady = [timed_sync(cluster, calls) for _ in range(cycles)]
    if any(cycle["changed"] for cycle in steady):
        raise RuntimeError("a steady sync cycle changed jobs")
    steady_s = statistics.median(c["seconds"] for c in steady)
    ray_s = statistics.median(c["server_seconds"] for c in steady)
    with urllib.request.urlopen(f"{head.address}/api/jobs/", timeout=60) as response:
        list_bytes = len(response.read())
    log(
        f"  steady sync of {len(jobs)} active jobs: median {steady_s:.3f} s over {cycles} cycles "
        f"(waiting for Ray's list {ray_s:.3f} s of it, {list_bytes / 1e6:.2f} MB); "
        f"calls per cycle {[c['calls'] for c in steady]}"
    )
    return {
        f"sync_s_{len(jobs)}": round(steady_s, 3),
        "sync_ray_list_s": round(ray_s, 3),
        "sync_list_mb": round(list_bytes / 1e6, 2),
        "sync_first_s": round(first["seconds"], 3),
        "sync_calls_per_cycle": max(c["calls"] for c in [first, *steady]),
    }


BACKENDS: dict[str, Callable[[argparse.Namespace], dict]] = {
    "kubernetes": bench_kubernetes,
    "ray": bench_ray,
}


# --- the run ----------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=sorted(BACKENDS), required=True)
    parser.add_argument("--jobs", type=int, default=1000, help="jobs dispatched, then synced")
    parser.add_argument("--cycles", type=int, default=5, help="steady sync cycles measured")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    result = BACKENDS[args.backend](args)
    log(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
