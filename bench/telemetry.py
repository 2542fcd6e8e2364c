"""Telemetry benchmark: 1,000 simulated nodes × 8 GPUs, each node's full default counter set served
in dcgm-exporter's format by the exporter simulator (a separate process; no GPU exists here),
scraped in one cycle on PostgreSQL, every GPU running a Slurm job known by its `hpc_job` label.

Measures:
- cycle_s: one steady-state cycle (fetch over HTTP, parse, store the samples, minute rollups and
  job energy, health rules), median of --cycles, with its parts;
- series, samples_per_s: series in the answers, and series per second of cycle;
- cluster_page_ms_1000_nodes: the cluster's fleet page (first page of 25 nodes and its summary)
  for a platform admin, median of 20 requests through Django's test client;
- energy_10k_jobs_s: measured energy of 10,000 finished jobs of 8 GPUs (80,000 energy rows),
  as metering reads it for a batch.

Usage: .venv/bin/python bench/telemetry.py [--nodes 1000] [--gpus 8] [--cycles 3]
Needs a local PostgreSQL (trust auth); creates and drops its own database. Last line: JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

from support import benchdb

ROOT = Path(__file__).resolve().parents[1]
DB_NAME = os.environ.get("BENCH_DB", "factory_bench_telemetry")


def setup_django() -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.update(
        DJANGO_SETTINGS_MODULE="factory.settings",
        DATABASE_URL=benchdb.url(DB_NAME),
        SECRET_KEY="bench-only-not-a-secret-" + "x" * 40,
        REDIS_URL="redis://127.0.0.1:6379/13",
        LOG_LEVEL="ERROR",
        SECURE_SSL_REDIRECT="0",
        FACTORY_TELEMETRY_TIMEOUT="10",
        ALLOWED_HOSTS="testserver,localhost",
    )
    os.environ.pop("DEBUG", None)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


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


def measure_cycles(cluster, cycles: int) -> dict:
    from fleet.scrape import scrape_cluster

    reports = []
    first = scrape_cluster(cluster)  # makes the GPU rows: not steady state
    for _ in range(cycles):
        reports.append(scrape_cluster(cluster))
    mid = sorted(reports, key=lambda r: r.seconds)[len(reports) // 2]
    assert mid.failed_nodes == 0, f"{mid.failed_nodes} nodes failed"
    return {
        "first_cycle_s": round(first.seconds, 3),
        "cycle_s": round(mid.seconds, 3),
        "cycle_fetch_parse_s": round(mid.fetch_seconds, 3),
        "cycle_store_s": round(mid.store_seconds, 3),
        "cycle_health_s": round(mid.health_seconds, 3),
        "gpus": mid.gpus,
        "series": mid.series,
        "samples_per_s": round(mid.series / mid.seconds),
    }


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
    args = parser.parse_args()
    benchdb.recreate(DB_NAME)
    simulator = None
    try:
        setup_django()
        simulator, base_url = start_simulator(args.nodes, args.gpus, args.gpus_per_job)
        cluster = seed(base_url, args.nodes, args.gpus, args.gpus_per_job)
        figures = measure_cycles(cluster, args.cycles)
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


if __name__ == "__main__":
    main()
