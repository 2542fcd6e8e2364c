"""How fast the portal hands jobs to a backend, and what a status sync of 1,000 jobs costs.

    .venv/bin/python bench/dispatch.py --backend kubernetes [--jobs 1000] [--cycles 5]
    .venv/bin/python bench/dispatch.py --backend slurm [--concurrency 4] [--py-spy stacks.txt]
    .venv/bin/python bench/dispatch.py --backend slurm --array 1000

Self-contained: it creates a fresh PostgreSQL database (`factory_bench_dispatch`), sets
DATABASE_URL to it before Django starts, migrates it and seeds a tenant, a GPU type and one
cluster of the chosen backend; at the end it drops the database. Celery uses an in-memory broker:
nothing is enqueued on the measured paths, and no worker runs.

Each backend is a function in BACKENDS that brings up its backend and measures through the real
adapter, on the portal's own code paths:
- dispatch: `jobs.dispatch.dispatch_many([job])` for each of N admitted jobs, one after another, as a
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

slurm: the real local Slurm of scripts/slurm-dev-cluster, measured end to end instead. Half of
--jobs are admitted jobs whose dispatch tasks are enqueued (`jobs.tasks.enqueue_dispatch`) on Redis
(db 11, flushed before and after) for a real `celery worker` subprocess (--concurrency, default 4),
timed until the last is `submitted`; the other half are plain `sbatch --parsable --hold --wrap true`
calls in a serial loop, the baseline (`ratio` = portal / sbatch jobs per second). The bench's tenant
gets its own Slurm account with GrpJobs=0, so its jobs queue but never take a GPU; the sync then
covers all of them (the held ones as submitted jobs with their real ids), calls counted at
SlurmCLI.execute. Every Slurm job it made is cancelled by id at the end, and the account deleted.
It uses its own database (`factory_bench_dispatch_slurm`).

slurm --array N: an array of N tasks, admitted, handed to the real Slurm by the dispatch task
(`jobs.tasks.dispatch_jobs`, run in this process): `array_dispatch_s` from admitted to every task
recorded as submitted, with the Slurm calls it made (one `sbatch --array`), the median of
--array-rounds arrays; then one sync of all their tasks (`array_sync_s`, one squeue). Its jobs
run as the POSIX account --posix-user (made by scripts/slurm-dev-cluster) in the same held-back
account as above.

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from support import benchdb, procstat

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DB_NAME = "factory_bench_dispatch"
TENANT = "bench-lab"
GPU_PRODUCT = "NVIDIA-H100-80GB-HBM3"


def log(message: str) -> None:
    print(message, flush=True)


# --- database and Django --------------------------------------------------------------------------


@contextlib.contextmanager
def portal_database(name: str = DB_NAME, **env: str) -> Iterator[Path]:
    """Django set up on a fresh bench database, dropped afterwards; yields the var directory.
    `env` overrides settings' environment (the slurm bench's Redis broker and job root)."""
    log(f"Creating database {name} and migrating ...")
    benchdb.recreate(name)
    try:
        with tempfile.TemporaryDirectory(prefix="factory-bench-dispatch-") as tmp:
            setup_django(Path(tmp), name, env)
            yield Path(tmp)
    finally:
        if "django.db" in sys.modules:
            from django.db import connections

            connections.close_all()
        benchdb.drop(name)


def setup_django(var_dir: Path, name: str = DB_NAME, env: dict[str, str] | None = None) -> None:
    os.environ.pop("REDIS_URL", None)
    os.environ.update(
        DATABASE_URL=f"postgresql://postgres@127.0.0.1:5432/{name}",
        SECRET_KEY="bench-only-not-a-secret-" + "x" * 40,
        DEBUG="0",
        CELERY_BROKER_URL="memory://localhost/",  # tasks enqueued on the way (admission) go nowhere
        FACTORY_VAR_DIR=str(var_dir),
        LOG_LEVEL="WARNING",
        DJANGO_SETTINGS_MODULE="factory.settings",
    )
    os.environ.update(env or {})
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
            gpus_per_node=1,
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
        dispatch.dispatch_many([job])
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


def steady_syncs(sync: Callable[[], dict], cycles: int) -> tuple[list[dict], float, float]:
    """`cycles` sync cycles in which nothing may change, with their median time and the median
    time of it spent in the backend's answers."""
    steady = [sync() for _ in range(cycles)]
    if any(cycle["changed"] for cycle in steady):
        raise RuntimeError("a steady sync cycle changed jobs")
    median = statistics.median
    return steady, median(c["seconds"] for c in steady), median(c["server_seconds"] for c in steady)


# --- backends ---------------------------------------------------------------------------------------


def bench_kubernetes(args: argparse.Namespace) -> dict:
    import yaml

    from tests.integration.k8s_fake import FakeKubernetes

    with portal_database():
        fake = TimedFake(FakeKubernetes().start_server())
        try:
            connection = {
                "kubeconfig": yaml.safe_dump(fake.fake.kubeconfig()),
                "allowed_images": ["nvcr.io/nvidia/"],  # a cluster runs only the images it lists
            }
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
    steady, steady_s, server_s = steady_syncs(lambda: timed_sync(cluster, fake), cycles)
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
    steady, steady_s, ray_s = steady_syncs(lambda: timed_sync(cluster, calls), cycles)
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


def bench_slurm(args: argparse.Namespace) -> dict:
    """slurm: the real local Slurm (scripts/slurm-dev-cluster). Half of --jobs go through the
    portal's Celery path, half are plain `sbatch` calls (the baseline); the sync covers them all."""
    if not shutil.which("sbatch"):
        raise SystemExit("no Slurm here: run scripts/slurm-dev-cluster")
    portal_count = args.jobs // 2
    raw_count = args.jobs - portal_count
    worker_env = dict(item.split("=", 1) for item in args.worker_env)
    flush_redis(SLURM_BROKER)
    try:
        with (
            slurm_bench_account() as made,
            portal_database(SLURM_DB_NAME, CELERY_BROKER_URL=SLURM_BROKER, REDIS_URL=SLURM_BROKER) as var_dir,
        ):
            from factory.models import Pool
            from jobs.models import Job

            tenant, user, h100, cluster = seed("slurm", {}, {})
            Pool.objects.filter(cluster=cluster).update(partition="gpu")
            jobs = slurm_jobs(portal_count, tenant, user, h100, cluster)
            result = {
                "backend": "slurm",
                "jobs": args.jobs,
                "portal_jobs": portal_count,
                "sbatch_jobs": raw_count,
                **({"worker_env": worker_env} if worker_env else {}),
            }
            try:
                log(f"slurm: {raw_count} plain sbatch calls, one after another ...")
                raw_ids, baseline = measure_sbatch_baseline(raw_count, var_dir, made)
                result.update(baseline)
                log(
                    f"slurm: {portal_count} jobs through Celery (worker --concurrency={args.concurrency}) "
                    "to Slurm ..."
                )
                result.update(
                    measure_slurm_dispatch(jobs, var_dir, args.concurrency, args.py_spy, worker_env)
                )
                result["ratio"] = round(result["sbatch_ms_per_job"] / result["portal_ms_per_job"], 3)
                log(f"  ratio portal / sbatch: {result['ratio']}")
                result.update(measure_slurm_syncs(cluster, tenant, user, h100, raw_ids, args.cycles))
            finally:
                made.extend(Job.objects.exclude(external_id="").values_list("external_id", flat=True))
            return result
    finally:
        flush_redis(SLURM_BROKER)


SLURM_DB_NAME = "factory_bench_dispatch_slurm"  # not the other backends' database: they may run at once
SLURM_BROKER = "redis://127.0.0.1:6379/11"
SLURM_CONCURRENCY = 4


def flush_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


def slurm(*argv: str, check: bool = True) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} failed: {(result.stderr or result.stdout).strip()}")
    return result.stdout


@contextlib.contextmanager
def slurm_bench_account(user: str | None = None) -> Iterator[list[str]]:
    """The Slurm account of the bench's tenant, with GrpJobs=0: its jobs are accepted and queue
    (reason AssocGrpJobsLimit) but never start, so the bench occupies no GPU of the shared node.
    `user` (default: this process's) may submit under it. Yields the list of Slurm job ids the
    bench made; on exit they (and anything still queued in the account) are cancelled by id, then
    the account is deleted."""
    import pwd

    user = user or pwd.getpwuid(os.getuid()).pw_name
    slurm(
        "sacctmgr",
        "-i",
        "add",
        "account",
        TENANT,
        "Description=bench/dispatch.py",
        "Organization=bench",
        check=False,
    )
    slurm("sacctmgr", "-i", "add", "user", user, f"Account={TENANT}", check=False)
    slurm("sacctmgr", "-i", "modify", "account", TENANT, "set", "GrpJobs=0")
    made: list[str] = []
    try:
        yield made
    finally:
        # %F: an array's own id for each of its tasks (%i would print "117_[0-999]").
        queued = slurm("squeue", "-h", "-A", TENANT, "-o", "%F", check=False).split()
        ids = sorted({*made, *queued}, key=int)
        for start in range(0, len(ids), 500):
            slurm("scancel", *ids[start : start + 500], check=False)
        log(f"slurm: cancelled the bench's {len(ids)} Slurm jobs")
        for _ in range(30):  # slurmdbd learns of the cancellations a moment later
            slurm("sacctmgr", "-i", "delete", "user", user, f"account={TENANT}", check=False)
            slurm("sacctmgr", "-i", "delete", "account", TENANT, check=False)
            if not slurm(
                "sacctmgr", "-n", "-P", "show", "account", TENANT, "format=Account", check=False
            ).strip():
                break
            time.sleep(1)
        else:
            log(f"slurm: account {TENANT} could not be deleted; remove it with sacctmgr")


def slurm_jobs(count: int, tenant, user, gpu_type, cluster) -> list:
    """Admitted jobs small enough for the node (1 GPU, 1 CPU, 1 GB); the account keeps them queued."""
    from jobs.models import Job

    admitted_jobs(count, tenant, user, gpu_type, cluster, image="")
    Job.objects.filter(cluster=cluster).update(
        command="sleep 600", cpus=1, memory_gb=1, time_limit_minutes=10
    )
    return list(
        Job.objects.filter(cluster=cluster).select_related("cluster", "gpu_type", "tenant").order_by("id")
    )


def measure_sbatch_baseline(count: int, var_dir: Path, made: list[str]) -> tuple[list[str], dict]:
    """`sbatch --parsable --hold --wrap true`, `count` times in a serial loop, from Python as the
    adapter runs it. The jobs stay held; their ids join the sync's active set."""
    ids: list[str] = []
    cpu = cpu_snapshot()
    started = time.perf_counter()
    for _ in range(count):
        out = subprocess.run(
            ["sbatch", "--parsable", "--hold", "--wrap", "true"],
            capture_output=True,
            text=True,
            check=True,
            cwd=var_dir,
        ).stdout
        ids.append(out.strip().split(";", 1)[0])
        made.append(ids[-1])
    seconds = time.perf_counter() - started
    cpu = cpu_ms_per_job(cpu, cpu_snapshot(), count)
    del cpu["worker"]
    log(
        f"  sbatch: {count / seconds:.1f} jobs/s, {1000 * seconds / count:.2f} ms each; CPU ms per job "
        f"{cpu} (bench = this loop with its sbatch runs)"
    )
    return ids, {
        "sbatch_jobs_per_s": round(count / seconds, 1),
        "sbatch_ms_per_job": round(1000 * seconds / count, 2),
        "sbatch_cpu_ms_per_job": cpu,
    }


def measure_slurm_dispatch(
    jobs: list, var_dir: Path, concurrency: int, py_spy: str | None, worker_env: dict[str, str]
) -> dict:
    """From enqueueing one dispatch task per job (`jobs.tasks.enqueue_dispatch`, as admission
    does) until the last job is `submitted` in the database, through a real Celery worker."""
    from django.conf import settings
    from django.db.models import Count, Max
    from django.utils import timezone

    from jobs.choices import JobState
    from jobs.models import Job
    from jobs.tasks import enqueue_dispatch

    env = {**os.environ, "FACTORY_SLURM_JOB_ROOT": str(settings.FACTORY_SLURM_JOB_ROOT), **worker_env}
    worker = start_worker(env, concurrency, var_dir / "worker.log")
    profiler = None
    try:
        wait_for_worker(worker, var_dir / "worker.log")
        if py_spy:
            profiler = start_py_spy(worker.pid, py_spy)
        ids = [job.pk for job in jobs]
        cpu = cpu_snapshot(worker.pid)
        enqueued_at = timezone.now()
        started = time.perf_counter()
        enqueue_dispatch({job.pk: job.cluster_id for job in jobs})
        enqueue_s = time.perf_counter() - started
        deadline = time.monotonic() + 600
        while True:
            counts = dict(
                Job.objects.filter(pk__in=ids)
                .values_list("state")
                .annotate(n=Count("id"))
                .values_list("state", "n")
            )
            if counts.get(JobState.SUBMITTED, 0) == len(ids):
                break
            if set(counts) - {JobState.ADMITTED, JobState.SUBMITTED}:
                reasons = set(
                    Job.objects.filter(pk__in=ids).exclude(reason="").values_list("reason", flat=True)[:3]
                )
                raise RuntimeError(f"jobs left the dispatch path: {counts}; {reasons}")
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dispatch did not finish ({counts}); see {var_dir / 'worker.log'}")
            time.sleep(0.25)  # the end is read from submitted_at: polling only has to notice it
        polled_s = time.perf_counter() - started
        last = Job.objects.filter(pk__in=ids).aggregate(last=Max("submitted_at"))["last"]
        seconds = (last - enqueued_at).total_seconds()
        cpu = cpu_ms_per_job(cpu, cpu_snapshot(worker.pid), len(ids))
    finally:
        if profiler is not None:
            stop_process(profiler, signal.SIGINT)
            log(f"  py-spy profile of the worker written to {py_spy}")
        stop_process(worker, signal.SIGTERM)
    log(
        f"  portal: {len(ids) / seconds:.1f} jobs/s, {1000 * seconds / len(ids):.2f} ms each, enqueue to "
        f"last submitted {seconds:.2f} s (polled {polled_s:.2f} s; enqueueing {enqueue_s:.3f} s); "
        f"CPU ms per job {cpu} (bench = enqueueing and polling)"
    )
    return {
        "portal_jobs_per_s": round(len(ids) / seconds, 1),
        "portal_ms_per_job": round(1000 * seconds / len(ids), 2),
        "portal_enqueue_s": round(enqueue_s, 3),
        "worker_concurrency": concurrency,
        "portal_cpu_ms_per_job": cpu,
    }


def start_worker(env: dict[str, str], concurrency: int, log_path: Path) -> subprocess.Popen:
    from django.conf import settings

    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "factory",
        "worker",
        "-Q",
        ",".join(settings.FACTORY_QUEUES),
        f"--concurrency={concurrency}",
        "--without-gossip",
        "--without-mingle",
        "--loglevel=WARNING",
    ]
    with log_path.open("ab") as log_file:
        return subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )


def wait_for_worker(worker: subprocess.Popen, log_path: Path, timeout: float = 60.0) -> None:
    """Until the worker answers a broadcast ping (its pool is up and it consumes the queue)."""
    from factory.celery import app

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise RuntimeError(
                f"the Celery worker exited with {worker.returncode}: {log_path.read_text()[-2000:]}"
            )
        if app.control.ping(timeout=0.5):
            return
    raise RuntimeError(f"the Celery worker did not answer within {timeout:g} s")


def stop_process(process: subprocess.Popen, sig: int) -> None:
    """Stop a process this bench started (its own session: the worker's pool goes with it)."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, sig)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def start_py_spy(pid: int, out: str) -> subprocess.Popen:
    py_spy = Path(sys.executable).with_name("py-spy")
    command = [str(py_spy), "record", "--pid", str(pid), "--subprocesses", "--rate", "250"]
    command += ["--format", "raw", "--output", out]
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    time.sleep(1.0)  # attached to the worker and its pool processes
    return process


SLURM_DAEMONS = ("slurmctld", "slurmdbd", "slurmd")


def cpu_snapshot(worker_pgid: int | None = None) -> dict[str, float]:
    """CPU seconds used so far by the worker's process group (its pool and their sbatch runs),
    the Slurm daemons, PostgreSQL, MariaDB (slurmdbd's store), Redis, this process with the children
    it ran, and the whole machine."""
    seconds: dict[str, float] = dict.fromkeys(("worker", *SLURM_DAEMONS, "postgres", "mariadb", "redis"), 0.0)
    for process in procstat.processes():
        name, used = process.name, process.cpu_seconds
        if worker_pgid is not None and process.pgid == worker_pgid:
            seconds["worker"] += used
        elif name in SLURM_DAEMONS:
            seconds[name] += used
        elif name.startswith("postgres"):
            seconds["postgres"] += used
        elif name.startswith(("mariadbd", "mysqld")):
            seconds["mariadb"] += used
        elif name.startswith("redis"):
            seconds["redis"] += used
    own = os.times()
    seconds["bench"] = own.user + own.system + own.children_user + own.children_system
    seconds["machine"] = procstat.machine_busy_seconds()
    return seconds


def cpu_ms_per_job(before: dict[str, float], after: dict[str, float], count: int) -> dict[str, float]:
    return {key: round(1000 * (after[key] - before[key]) / count, 2) for key in before if key in after}


class SlurmCalls:
    """Counts the adapter's Slurm CLI calls (SlurmCLI.execute) and the time spent in them."""

    def __enter__(self) -> SlurmCalls:
        from factory.adapters.slurm.cli import SlurmCLI

        self.tools: list[str] = []
        self.seconds = 0.0
        self.cli_class = SlurmCLI
        self.original = SlurmCLI.execute
        counter = self

        def execute(cli, argv, **kwargs):
            started = time.perf_counter()
            try:
                return counter.original(cli, argv, **kwargs)
            finally:
                counter.tools.append(" ".join(argv[:3]) if argv[0] == "scontrol" else argv[0])
                counter.seconds += time.perf_counter() - started

        SlurmCLI.execute = execute
        return self

    def __exit__(self, *exc) -> None:
        self.cli_class.execute = self.original

    def calls(self) -> int:
        return len(self.tools)


def slurm_sync(cluster, calls: SlurmCalls) -> dict:
    before = calls.calls()
    cycle = timed_sync(cluster, calls)
    cycle["tools"] = calls.tools[before:]
    return cycle


def measure_slurm_syncs(cluster, tenant, user, gpu_type, raw_ids: list[str], cycles: int) -> dict:
    """The portal's jobs plus the baseline's held ones (as submitted jobs of the portal with those
    real Slurm ids): steady cycles where nothing changes, then one where a tenth were cancelled."""
    from django.utils import timezone

    from jobs.choices import JobState
    from jobs.models import Job

    now = timezone.now()
    Job.objects.bulk_create(
        Job(
            tenant=tenant,
            owner=user,
            name=f"held-{i}",
            command="true",
            gpu_type=gpu_type,
            gpu_count=1,
            gpus_per_node=1,
            cpus=1,
            memory_gb=1,
            time_limit_minutes=10,
            state=JobState.SUBMITTED,
            cluster=cluster,
            external_id=external_id,
            admitted_at=now,
            submitted_at=now,
        )
        for i, external_id in enumerate(raw_ids)
    )
    active = list(
        Job.objects.filter(cluster=cluster).at_backend().order_by("id").values_list("external_id", flat=True)
    )
    in_squeue = len(cluster.adapter().squeue())
    log(
        f"slurm: syncing {len(active)} active jobs ({in_squeue} jobs in `squeue --json`, "
        "finished ones included until MinJobAge) ..."
    )
    with SlurmCalls() as calls:
        first = slurm_sync(cluster, calls)
        log(
            f"  first sync: {first['seconds']:.3f} s; {first['changed']} jobs changed (their waiting "
            f"reason); calls {first['tools']} ({first['server_seconds']:.3f} s in them)"
        )
        steady, steady_s, cli_s = steady_syncs(lambda: slurm_sync(cluster, calls), cycles)
        log(
            f"  steady sync of {len(active)} active jobs: median {steady_s:.3f} s over {cycles} cycles "
            f"(in squeue {cli_s:.3f} s of it); calls per cycle {[c['tools'] for c in steady]}"
        )
        ending = active[::10]
        slurm("scancel", *ending)
        ended = slurm_sync(cluster, calls)
        cancelled = Job.objects.filter(cluster=cluster, state=JobState.CANCELLED).count()
        log(
            f"  sync after {len(ending)} jobs were cancelled in Slurm: {ended['seconds']:.3f} s "
            f"({ended['server_seconds']:.3f} s in the CLI); {cancelled} jobs cancelled in the portal; "
            f"calls {ended['tools']}"
        )
    if cancelled != len(ending):
        raise RuntimeError(f"{len(ending)} jobs were cancelled in Slurm, {cancelled} in the portal")
    return {
        "squeue_jobs": in_squeue,
        f"sync_s_{len(active)}": round(steady_s, 3),
        "sync_squeue_s": round(cli_s, 3),
        "sync_first_s": round(first["seconds"], 3),
        "sync_with_endings_s": round(ended["seconds"], 3),
        "sync_calls_per_cycle": max(len(c["tools"]) for c in [first, *steady]),
        "sync_calls_with_endings": ended["tools"],
    }


# --- slurm --array: one array of N tasks -------------------------------------------------------------

SLURM_ARRAY_DB_NAME = "factory_bench_dispatch_slurm_array"


def bench_slurm_array(args: argparse.Namespace) -> dict:
    """One array of `--array` tasks from admitted to accepted by the real Slurm, through the
    dispatch task, then one sync of them all."""
    if not shutil.which("sbatch"):
        raise SystemExit("no Slurm here: run scripts/slurm-dev-cluster")
    job_root = Path(tempfile.mkdtemp(prefix="factory-bench-array-"))
    job_root.chmod(0o755)  # the POSIX account makes the array's directory below it
    try:
        with (
            slurm_bench_account(args.posix_user) as made,
            portal_database(SLURM_ARRAY_DB_NAME, FACTORY_SLURM_JOB_ROOT=str(job_root / "slurm-jobs")),
        ):
            from factory.models import Identity, Pool
            from jobs.models import JobArray

            tenant, user, h100, cluster = seed("slurm", {}, {})
            Pool.objects.filter(cluster=cluster).update(partition="gpu")
            Identity.objects.create(user=user, posix_username=args.posix_user)
            try:
                return measure_slurm_array(args.array, args.array_rounds, tenant, user, h100, cluster)
            finally:
                made.extend(JobArray.objects.exclude(external_id="").values_list("external_id", flat=True))
    finally:
        shutil.rmtree(job_root, ignore_errors=True)


def admitted_array(size: int, tenant, user, gpu_type, cluster):
    """An array of `size` one-GPU tasks, all admitted to the cluster (admission is not measured)."""
    from django.utils import timezone

    from jobs import arrays, submission
    from jobs.choices import JobState
    from jobs.models import Job, JobArray

    spec = {
        "name": "bench-array",
        "command": "echo task $FACTORY_ARRAY_INDEX",
        "gpu_type": gpu_type,
        "gpu_count": 1,
        "cpus": 1,
        "memory_gb": 1,
        "time_limit_minutes": 10,
    }
    tasks = arrays.parse(f"0-{size - 1}", None)
    array, _ = submission.submit_array(tenant=tenant, owner=user, spec=spec, tasks=tasks)
    now = timezone.now()
    Job.objects.filter(array=array).update(
        state=JobState.ADMITTED, cluster=cluster, admitted_at=now, dispatch_enqueued_at=now
    )
    JobArray.objects.filter(pk=array.pk).update(cluster=cluster)
    return array, list(array.tasks.order_by("array_index").values_list("pk", flat=True))


def measure_slurm_array(size: int, rounds: int, tenant, user, gpu_type, cluster) -> dict:
    """`rounds` arrays, one after another, each timed from admitted to all its tasks submitted
    (the median is `array_dispatch_s`); then one sync of all their tasks."""
    from jobs import dispatch
    from jobs.models import Job

    cluster.adapter().cli.controller_config()  # read once per process, as a worker has it
    measured = [dispatch_one_array(size, tenant, user, gpu_type, cluster) for _ in range(rounds)]
    median = sorted(measured, key=lambda m: m["seconds"])[len(measured) // 2]
    active = Job.objects.filter(cluster=cluster).at_backend().count()
    with SlurmCalls() as calls:
        started = time.perf_counter()
        changed = dispatch.sync_cluster(cluster)
        sync_seconds = time.perf_counter() - started
    reasons = set(Job.objects.filter(cluster=cluster).values_list("reason", flat=True))
    log(
        f"  one sync of the {active} tasks: {sync_seconds:.3f} s, {changed} changed (their waiting reason: "
        f"{sorted(reasons)}); calls {calls.tools}"
    )
    return {
        "backend": "slurm",
        "array_tasks": size,
        "array_dispatch_s": round(median["seconds"], 3),
        "array_dispatch_s_rounds": [round(m["seconds"], 3) for m in measured],
        "array_dispatch_tasks_per_s": round(size / median["seconds"], 1),
        "sbatch_calls": median["tools"].count("sbatch"),
        "slurm_calls": median["tools"],
        "slurm_cli_s": round(median["cli_seconds"], 3),
        "squeue_tasks": median["squeue_tasks"],
        "array_sync_tasks": active,
        "array_sync_s": round(sync_seconds, 3),
        "array_sync_changed": changed,
        "array_sync_calls": calls.tools,
    }


def dispatch_one_array(size: int, tenant, user, gpu_type, cluster) -> dict:
    """One admitted array through the dispatch task, checked: every task submitted as
    <Slurm array id>_<index>, and Slurm listing them all."""
    from django.db.models import Count

    from jobs.choices import JobState
    from jobs.models import Job
    from jobs.tasks import dispatch_jobs

    array, ids = admitted_array(size, tenant, user, gpu_type, cluster)
    with SlurmCalls() as calls:
        started = time.perf_counter()
        dispatch_jobs(ids)
        seconds = time.perf_counter() - started
    array.refresh_from_db()
    counts = dict(Job.objects.filter(pk__in=ids).values_list("state").annotate(n=Count("id")))
    expected = {f"{array.external_id}_{i}" for i in range(size)}
    recorded = set(Job.objects.filter(pk__in=ids).values_list("external_id", flat=True))
    if counts != {JobState.SUBMITTED: size} or recorded != expected:
        raise RuntimeError(
            f"the array's tasks were not all submitted as {array.external_id}_<index>: {counts}"
        )
    listed = slurm("squeue", "-h", "-r", "-j", array.external_id, "-o", "%i").split()
    log(
        f"  dispatch: {seconds:.3f} s from admitted to {size} tasks submitted as Slurm array "
        f"{array.external_id} ({len(listed)} tasks in squeue); Slurm calls {calls.tools} "
        f"({calls.seconds:.3f} s in them)"
    )
    return {
        "seconds": seconds,
        "tools": list(calls.tools),
        "cli_seconds": calls.seconds,
        "squeue_tasks": len(listed),
    }


BACKENDS: dict[str, Callable[[argparse.Namespace], dict]] = {
    "kubernetes": bench_kubernetes,
    "ray": bench_ray,
    "slurm": bench_slurm,
}


# --- the run ----------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=sorted(BACKENDS), required=True)
    parser.add_argument("--jobs", type=int, default=1000, help="jobs dispatched, then synced")
    parser.add_argument("--cycles", type=int, default=5, help="steady sync cycles measured")
    parser.add_argument(
        "--concurrency", type=int, default=SLURM_CONCURRENCY, help="slurm: the Celery worker's pool size"
    )
    parser.add_argument("--py-spy", metavar="FILE", help="slurm: record the worker with py-spy (raw stacks)")
    parser.add_argument("--array", type=int, metavar="N", help="slurm: dispatch one array of N tasks instead")
    parser.add_argument(
        "--array-rounds", type=int, default=3, help="slurm --array: arrays timed (median kept)"
    )
    parser.add_argument(
        "--posix-user", default="aif-alice", help="slurm --array: the POSIX account its jobs run as"
    )
    parser.add_argument(
        "--worker-env",
        metavar="NAME=VALUE",
        action="append",
        default=[],
        help="slurm: an environment variable for the worker only (e.g. DB_POOL_MAX_SIZE=0); repeatable",
    )
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if args.array and args.backend != "slurm":
        raise SystemExit("--array is measured on --backend slurm")
    result = bench_slurm_array(args) if args.array else BACKENDS[args.backend](args)
    log(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
