"""Telemetry benchmark: 1,000 simulated nodes × 8 GPUs, each node's full default counter set served
in dcgm-exporter's format by the exporter simulator (a separate process; no GPU exists here),
scraped in one cycle on PostgreSQL, every GPU running a Slurm job known by its `hpc_job` label.

Measures:
- cycle_s: one steady-state cycle as the portal runs it: fleet.tasks.scrape_due starts it, one
  Celery task per shard of FACTORY_TELEMETRY_SHARD_NODES nodes, run by a real `celery worker` of
  the cluster's queue with one process per CPU (fetch over HTTP, parse, store the samples, minute
  rollups and job energy, health rules), from the start to its last shard's end; median of
  --cycles;
- cycle_one_task_s and its parts (cycle_fetch_parse_s, cycle_store_s, cycle_health_s): the same
  cycle in one process, in one task, where the time goes; cycle_one_task_cpu_s, the CPU time
  that process spent on it (without PostgreSQL's and the simulator's): on a machine shared with
  other work, the figure that does not depend on what else runs;
- series, samples_per_s: series in the answers, and series per second of cycle;
- cluster_page_ms_1000_nodes: the cluster's fleet page (first page of 25 nodes and its summary)
  for a platform admin, median of 20 requests through Django's test client;
- energy_10k_jobs_s: measured energy of 10,000 finished jobs of 8 GPUs (80,000 energy rows),
  as metering reads it for a batch.

With --source prometheus, the same fleet read from a Prometheus instead: bench/telemetry_prometheus.py.

Usage: .venv/bin/python bench/telemetry.py [--nodes 1000] [--gpus 8] [--cycles 3] [--profile FILE]
                                           [--source prometheus]
Needs a local PostgreSQL (trust auth) and redis-server; creates and drops its own database, runs
its own Redis. --profile writes cProfile stats of one more single-task cycle. Last line: JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from support import benchdb, services

ROOT = Path(__file__).resolve().parents[1]
DB_NAME = os.environ.get("BENCH_DB", "factory_bench_telemetry")
REDIS_PORT = services.free_port()


def setup_django() -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.update(
        DJANGO_SETTINGS_MODULE="factory.settings",
        DATABASE_URL=benchdb.url(DB_NAME),
        SECRET_KEY="bench-only-not-a-secret-" + "x" * 40,
        REDIS_URL=f"redis://127.0.0.1:{REDIS_PORT}/0",
        LOG_LEVEL="ERROR",
        SECURE_SSL_REDIRECT="0",
        FACTORY_TELEMETRY_TIMEOUT="10",
        ALLOWED_HOSTS="testserver,localhost",
        # The pages name their static files by hash, as in production: collected below.
        STATIC_ROOT=tempfile.mkdtemp(prefix="factory-bench-static-"),
    )
    os.environ.pop("DEBUG", None)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    call_command("collectstatic", interactive=False, verbosity=0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_simulator(nodes: int, gpus: int, gpus_per_job: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fleet.simulator",
            "--port",
            str(port),
            "--nodes",
            str(nodes),
            "--gpus",
            str(gpus),
            "--gpus-per-job",
            str(gpus_per_job),
            "--collect-seconds",
            "30",  # dcgm-exporter's default collection interval: answers are served as collected
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    proc.stdout.readline()  # ready once it has collected every node
    return proc, f"http://127.0.0.1:{port}"


def seed(base_url: str, nodes: int, gpus: int, gpus_per_job: int):
    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from factory.models import Cluster, GpuType, Pool, Tenant
    from fleet.models import Node
    from fleet.simulator import Simulator
    from jobs.models import Job

    h100 = GpuType.objects.create(slug="h100", name="H100")
    cluster = Cluster.objects.create(slug="big", name="Big", kind="slurm", region="local")
    Pool.objects.create(cluster=cluster, gpu_type=h100, capacity=nodes * gpus, partition="gpu")
    names = list(Simulator.uniform(nodes, 0).nodes)
    Node.objects.bulk_create(
        Node(cluster=cluster, name=name, gpu_type=h100, exporter_url=f"{base_url}/nodes/{name}/metrics")
        for name in names
    )
    tenant = Tenant.objects.create(slug="lab", name="Lab")
    user = get_user_model().objects.create_user("researcher", password="x")
    now = timezone.now()
    Job.objects.bulk_create(
        Job(
            tenant=tenant,
            owner=user,
            name=f"j{i}",
            command="true",
            gpu_type=h100,
            gpu_count=gpus_per_job,
            gpus_per_node=gpus_per_job,
            state="running",
            cluster=cluster,
            external_id=str(i),
            started_at=now,
        )
        for i in range(1, nodes * gpus // gpus_per_job + 1)
    )
    from factory import roles
    from factory.choices import PlatformRole

    roles.grant(get_user_model().objects.create_user("platform", password="x"), PlatformRole.PLATFORM_ADMIN)
    return cluster


def measure_cycles(cluster, cycles: int, profile: str | None = None) -> dict:
    """The cycle in one task, in this process: where the time goes."""
    from fleet.scrape import scrape_cluster

    reports, cpu = [], []
    first = scrape_cluster(cluster)  # makes the GPU rows: not steady state
    for _ in range(cycles):
        started = time.process_time()
        reports.append(scrape_cluster(cluster))
        cpu.append(time.process_time() - started)
    if profile:
        profile_cycle(cluster, profile)
    mid = sorted(reports, key=lambda r: r.seconds)[len(reports) // 2]
    assert mid.failed_nodes == 0, f"{mid.failed_nodes} nodes failed"
    return {
        "first_cycle_s": round(first.seconds, 3),
        "cycle_one_task_s": round(mid.seconds, 3),
        "cycle_one_task_cpu_s": round(statistics.median(cpu), 3),  # this process's, all threads
        "cycle_fetch_parse_s": round(mid.fetch_seconds, 3),
        "cycle_store_s": round(mid.store_seconds, 3),
        "cycle_health_s": round(mid.health_seconds, 3),
        "gpus": mid.gpus,
        "series": mid.series,
    }


def measure_sharded_cycles(cluster, cycles: int, log_dir: Path) -> dict:
    """Cycles as scrape_due starts them and a Celery worker (one process per CPU) runs them."""
    from django.conf import settings
    from django.utils import timezone

    from fleet.models import ClusterTelemetry, Node
    from fleet.tasks import scrape_due

    queue = settings.FACTORY_BACKEND_QUEUES[cluster.kind]
    worker = services.celery_worker(
        "telemetry", dict(os.environ), log_dir / "worker.log", os.cpu_count() or 2, "INFO", [queue]
    ).start()
    try:
        times = []
        for _ in range(cycles + 1):  # the first one warms the worker's processes up
            ClusterTelemetry.objects.filter(cluster=cluster).update(
                scraped_at=timezone.now() - timedelta(hours=1), shards_pending=0
            )
            started = timezone.now()
            shards = scrape_due()[cluster.slug]
            deadline = time.monotonic() + 120
            while ClusterTelemetry.objects.get(cluster=cluster).shards_pending:
                assert worker.alive and time.monotonic() < deadline, worker.tail()
                time.sleep(0.02)
            telemetry = ClusterTelemetry.objects.get(cluster=cluster)
            stale = Node.objects.filter(cluster=cluster, scraped_at__lt=started).count()
            assert stale == 0, f"{stale} nodes not scraped: {worker.tail()}"
            times.append(telemetry.cycle_seconds)
    finally:
        worker.stop()
        shard_lines = [line for line in worker.tail(100_000).splitlines() if "telemetry shard" in line]
        print("\n".join(shard_lines[-2 * shards :]), file=sys.stderr)
    return {"cycle_s": round(statistics.median(times[1:]), 3), "cycle_shards": shards}


def profile_cycle(cluster, path: str) -> None:
    """One more cycle under cProfile (this process only): the stats go to `path`, the top of
    them to stderr."""
    import cProfile
    import pstats

    from fleet.scrape import scrape_cluster

    profiler = cProfile.Profile()
    profiler.runcall(scrape_cluster, cluster)
    profiler.dump_stats(path)
    pstats.Stats(path, stream=sys.stderr).sort_stats("tottime").print_stats(25)


def parse_share(base_url: str, nodes: int) -> dict:
    """Where fetch+parse time goes: one node's answer fetched, then parsed, alone."""
    import requests

    from fleet.exposition import parse

    text = requests.get(f"{base_url}/nodes/gpu-node-{1:0{len(str(nodes))}d}/metrics", timeout=10).text
    started = time.perf_counter()
    for _ in range(50):
        parse(text)
    return {"parse_ms_per_node": round((time.perf_counter() - started) / 50 * 1000, 2)}


def measure_page(cluster) -> float:
    from django.contrib.auth import get_user_model
    from django.test import Client

    client = Client()
    client.force_login(get_user_model().objects.get(username="platform"))
    url = f"/clusters/{cluster.slug}/fleet/"
    first = client.get(url, secure=True)
    assert first.status_code == 200, first.status_code
    times = []
    for _ in range(20):
        started = time.perf_counter()
        response = client.get(url, secure=True)
        times.append(time.perf_counter() - started)
        assert response.status_code == 200
    return round(statistics.median(times) * 1000, 1)


def measure_energy(cluster, jobs: int, gpus: int) -> float:
    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from factory.models import GpuType, Tenant
    from fleet import energy
    from fleet.models import JobGpuEnergy
    from jobs.models import Job

    now = timezone.now()
    h100, tenant = GpuType.objects.get(slug="h100"), Tenant.objects.get(slug="lab")
    owner = get_user_model().objects.get(username="researcher")
    finished = Job.objects.bulk_create(
        Job(
            tenant=tenant,
            owner=owner,
            name=f"done{i}",
            command="true",
            gpu_type=h100,
            gpu_count=gpus,
            gpus_per_node=gpus,
            state="succeeded",
            cluster=cluster,
            started_at=now - timedelta(hours=2),
            ended_at=now - timedelta(hours=1),
        )
        for i in range(jobs)
    )
    rows = [
        JobGpuEnergy(
            job=job,
            attempt=0,
            gpu_uuid=f"GPU-{job.pk}-{g}",
            start_mj=10**9,
            end_mj=10**9 + 2_000_000_000,
            measured_mj=2_000_000_000,
            samples=360,
            utilisation_sum=360 * 80.0,
            memory_sum=360 * 40000.0,
            first_at=now - timedelta(hours=2),
            last_at=now - timedelta(hours=1),
            busy_at=now - timedelta(hours=1),
        )
        for job in finished
        for g in range(gpus)
    ]
    JobGpuEnergy.objects.bulk_create(rows, batch_size=5000)
    started = time.perf_counter()
    found = energy.measured((job.pk, 0) for job in finished)
    seconds = time.perf_counter() - started
    assert len(found) == jobs and all(use.kwh > 0 for use in found.values())
    return round(seconds, 3)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--gpus-per-job", type=int, default=4)
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--energy-jobs", type=int, default=10_000)
    parser.add_argument("--profile", metavar="FILE", help="write cProfile stats of one more cycle here")
    parser.add_argument(
        "--source",
        choices=["embedded", "prometheus"],
        default="embedded",
        help="see bench/telemetry_prometheus.py",
    )
    args = parser.parse_args()
    benchdb.recreate(DB_NAME)
    simulator = redis = None
    log_dir = Path(tempfile.mkdtemp(prefix="factory-bench-telemetry-"))
    try:
        redis = services.redis_server(REDIS_PORT, log_dir / "redis.log").start()
        redis.wait_for_port(REDIS_PORT)
        setup_django()
        if args.source == "prometheus":
            from telemetry_prometheus import run

            print(json.dumps({**run(args), "cpus": os.cpu_count()}))
            return
        simulator, base_url = start_simulator(args.nodes, args.gpus, args.gpus_per_job)
        cluster = seed(base_url, args.nodes, args.gpus, args.gpus_per_job)
        figures = measure_cycles(cluster, args.cycles, args.profile)
        figures.update(measure_sharded_cycles(cluster, args.cycles, log_dir))
        figures["samples_per_s"] = round(figures["series"] / figures["cycle_s"])
        figures.update(parse_share(base_url, args.nodes))
        figures["cluster_page_ms_1000_nodes"] = measure_page(cluster)
        figures["energy_10k_jobs_s"] = measure_energy(cluster, args.energy_jobs, args.gpus)
        figures.update(nodes=args.nodes, gpus_per_node=args.gpus, cpus=os.cpu_count())
        print(json.dumps(figures))
    finally:
        if simulator is not None:
            simulator.terminate()
            simulator.wait()
        from django.db import connections

        connections.close_all()
        benchdb.drop(DB_NAME)
        if redis is not None:
            redis.stop()
        shutil.rmtree(os.environ.get("STATIC_ROOT", ""), ignore_errors=True)
        shutil.rmtree(log_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
