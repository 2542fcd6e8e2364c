"""`bench/telemetry.py --source prometheus`: GPU telemetry read from a Prometheus holding 1,000
simulated nodes × 8 GPUs: Debian's prometheus scraping the exporter simulator (a separate process;
no GPU exists here) every 10 s, every GPU running a Slurm job the exporter labels (`hpc_job`), two
GPUs a job, the jobs ending and the next starting every minute. The portal keeps no samples.

Measures:
- prom_cycle_s: one steady-state cycle of the cluster (its queries, the fleet's rows, the job on
  each GPU, health rules), median of --cycles, with its parts; prom_queries_per_cycle;
- prom_energy_10k_jobs_s: measured energy of 10,000 finished jobs (increase() of the energy
  counter over each job's run, by its hpc_job label), as metering asks for a batch, and the
  queries it took (prom_energy_queries);
- prom_energy_10k_jobs_by_gpu_s: the same, for jobs known by the GPUs the portal saw them on
  (no labels: one @-windowed term per job).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
INTERVAL = 10.0  # Prometheus's scrape interval
STARTUP_SECONDS = 40.0  # Prometheus finds its first targets some 5 s after it starts, then scrapes
JOB_SECONDS = 60.0  # each simulated job runs this long, then the next starts
GPUS_PER_JOB = 2


def run(args) -> dict:
    from fleet.devprometheus import LocalPrometheus, config_text, free_port, scrape_config
    from fleet.simulator import Simulator

    port = free_port()
    per_epoch = jobs_per_epoch(args.nodes, args.gpus)
    epochs = -(-args.energy_jobs // per_epoch)
    # Jobs start at the first epoch boundary after Prometheus has had time to find every target,
    # and run `epochs` rounds: the series they leave behind are what the energy queries read.
    first_epoch = int((time.time() + STARTUP_SECONDS) // JOB_SECONDS) + 1
    simulator = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fleet.simulator",
            "--port",
            str(port),
            "--nodes",
            str(args.nodes),
            "--gpus",
            str(args.gpus),
            "--gpus-per-job",
            str(GPUS_PER_JOB),
            "--job-seconds",
            str(JOB_SECONDS),
            "--job-epochs",
            f"{first_epoch}:{epochs}",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    simulator.stdout.readline()
    names = list(Simulator.uniform(args.nodes, 0).nodes)
    config = config_text(
        scrape_config(f"127.0.0.1:{port}", names, labels={"fleet": "bench"}, interval=INTERVAL)
    )
    prometheus = LocalPrometheus(config)
    try:
        prometheus.wait_for(f'count(up{{fleet="bench"}} == 1) == {args.nodes}', timeout=180)
        cluster = seed(prometheus.url, args.nodes, args.gpus, range(first_epoch, first_epoch + epochs))
        while time.time() < first_epoch * JOB_SECONDS + INTERVAL:
            time.sleep(0.5)  # the cycles see every GPU running a job
        figures = measure_cycles(cluster, args.cycles)
        print(json.dumps(figures), file=sys.stderr, flush=True)  # kept should the rest fail
        figures.update(measure_energy(cluster, prometheus, args, range(first_epoch, first_epoch + epochs)))
        figures.update(prom_nodes=args.nodes, prom_gpus_per_node=args.gpus, prom_scrape_interval_s=INTERVAL)
        return figures
    finally:
        prometheus.stop()
        simulator.terminate()
        simulator.wait()


def jobs_per_epoch(nodes: int, gpus: int) -> int:
    return nodes * gpus // GPUS_PER_JOB


def epoch_window(epoch: int) -> tuple[datetime, datetime]:
    start = datetime.fromtimestamp(epoch * JOB_SECONDS, UTC)
    return start, datetime.fromtimestamp((epoch + 1) * JOB_SECONDS, UTC)


def seed(url: str, nodes: int, gpus: int, epochs: range):
    """A Slurm cluster read from the bench's Prometheus; the jobs of the bench's epochs, running."""
    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from factory.models import Cluster, GpuType, Pool, Tenant
    from fleet.choices import TelemetrySource
    from fleet.models import ClusterTelemetry
    from fleet.simulator import rotating_job
    from jobs.models import Job

    h100, _ = GpuType.objects.get_or_create(slug="h100", defaults={"name": "H100"})
    cluster = Cluster.objects.create(slug="prom", name="Prom", kind="slurm", region="local")
    Pool.objects.create(cluster=cluster, gpu_type=h100, capacity=nodes * gpus, partition="gpu")
    telemetry = ClusterTelemetry(cluster=cluster, source=TelemetrySource.PROMETHEUS)
    telemetry.set_prometheus({"url": url, "match": {"fleet": "bench"}, "timeout": 60.0})
    telemetry.save()
    tenant, _ = Tenant.objects.get_or_create(slug="lab", defaults={"name": "Lab"})
    user = get_user_model().objects.create_user("prom-researcher", password="x")
    per_epoch = jobs_per_epoch(nodes, gpus)
    now = timezone.now()
    Job.objects.bulk_create(
        (
            Job(
                tenant=tenant,
                owner=user,
                name=f"p{epoch}-{slot}",
                command="true",
                gpu_type=h100,
                gpu_count=GPUS_PER_JOB,
                gpus_per_node=GPUS_PER_JOB,
                state="running",
                cluster=cluster,
                external_id=rotating_job(epoch, per_epoch, slot),
                started_at=now,
            )
            for epoch in epochs
            for slot in range(per_epoch)
        ),
        batch_size=5000,
    )
    return cluster


def wait_scrape(prometheus, after: float) -> None:
    """Until nearly every target has been scraped since `after` (a loaded simulator lags a few)."""
    while True:
        found = prometheus.query(f'count(timestamp(up{{fleet="bench"}}) > {after})')
        total = prometheus.query('count(up{fleet="bench"})')
        if found and total and float(found[0]["value"][1]) >= 0.98 * float(total[0]["value"][1]):
            return
        time.sleep(0.5)


def measure_cycles(cluster, cycles: int) -> dict:
    from fleet.models import Gpu
    from fleet.sources import run_cycle

    first = run_cycle(cluster)  # finds the nodes and GPUs: not steady state
    assert not first.unavailable, first.unavailable
    reports = []
    for _ in range(cycles):
        time.sleep(INTERVAL / 2)  # a cycle every interval, as the scheduler runs them
        reports.append(run_cycle(cluster))
        reports[-1].with_a_job = Gpu.objects.filter(cluster=cluster, job__isnull=False).count()
    mid = sorted(reports, key=lambda r: r.seconds)[len(reports) // 2]
    assert not mid.unavailable and mid.failed_nodes == 0, mid
    return {
        "prom_first_cycle_s": round(first.seconds, 3),
        "prom_cycle_s": round(mid.seconds, 3),
        "prom_cycle_query_s": round(mid.fetch_seconds, 3),
        "prom_cycle_store_s": round(mid.store_seconds, 3),
        "prom_cycle_health_s": round(mid.health_seconds, 3),
        "prom_queries_per_cycle": mid.queries,
        "prom_gpus": mid.gpus,
        "prom_gpus_with_a_job": mid.with_a_job,
        "load_avg_1m": round(os.getloadavg()[0], 1),  # others' work on the same machine
    }


def count_queries():
    from fleet.promql import PromQL

    return mock.patch.object(PromQL, "_post", autospec=True, side_effect=PromQL._post)


def measure_energy(cluster, prometheus, args, epochs: range) -> dict:
    """The bench's jobs, finished: the energy of 10,000 of them."""
    from fleet import energy
    from fleet.models import JobGpuEnergy
    from fleet.simulator import Simulator, gpu_uuid, rotating_job
    from jobs.models import Job

    per_epoch = jobs_per_epoch(args.nodes, args.gpus)
    done_at = (epochs[-1] + 1) * JOB_SECONDS
    while time.time() < done_at:
        time.sleep(1)
    wait_scrape(prometheus, done_at + 1)
    chosen = []
    for epoch in epochs:
        start, end = epoch_window(epoch)
        ids = [rotating_job(epoch, per_epoch, slot) for slot in range(per_epoch)]
        Job.objects.filter(cluster=cluster, external_id__in=ids).update(
            state="succeeded", started_at=start, ended_at=end
        )
        chosen += list(Job.objects.filter(cluster=cluster, external_id__in=ids).values_list("pk", flat=True))
    pairs = [(pk, 0) for pk in chosen[: args.energy_jobs]]
    with count_queries() as asked:
        started = time.perf_counter()
        found = energy.measured(pairs)
        seconds = time.perf_counter() - started
    # A job Prometheus scraped fewer than twice (a loaded simulator answers late) has no increase().
    assert len(found) >= 0.9 * len(pairs), f"{len(found)} of {len(pairs)} measured"
    by_label = {"prom_energy_10k_jobs_s": round(seconds, 3), "prom_energy_queries": asked.call_count}
    by_label["prom_energy_jobs_measured"] = len(found)
    by_label["prom_energy_kwh_per_job_median"] = round(
        float(statistics.median(u.kwh for u in found.values())), 6
    )
    # The same windows, the jobs known only by the GPUs they held (the portal's own record).
    nodes = list(Simulator.uniform(args.nodes, 0).nodes)
    jobs = list(
        Job.objects.filter(pk__in=[pk for pk, _ in pairs]).values(
            "pk", "external_id", "started_at", "ended_at", "tenant_id", "owner_id"
        )
    )
    rows, unlabelled = [], []
    copies = Job.objects.bulk_create(
        Job(
            tenant_id=job["tenant_id"],
            owner_id=job["owner_id"],
            name=f"u{job['pk']}",
            command="true",
            gpu_type_id=cluster.pools.get().gpu_type_id,
            gpu_count=GPUS_PER_JOB,
            gpus_per_node=GPUS_PER_JOB,
            state="succeeded",
            cluster=cluster,
            started_at=job["started_at"],
            ended_at=job["ended_at"],
        )
        for job in jobs
    )
    for job, copy in zip(jobs, copies, strict=True):
        slot = (int(job["external_id"]) - 1) % per_epoch
        for gpu in range(slot * GPUS_PER_JOB, (slot + 1) * GPUS_PER_JOB):
            node, index = nodes[gpu // args.gpus], gpu % args.gpus
            rows.append(
                JobGpuEnergy(
                    job=copy,
                    attempt=0,
                    gpu_uuid=gpu_uuid(node, index),
                    start_mj=0,
                    end_mj=0,
                    first_at=job["started_at"],
                    last_at=job["ended_at"],
                    busy_at=job["ended_at"],
                )
            )
        unlabelled.append((copy.pk, 0))
    JobGpuEnergy.objects.bulk_create(rows, batch_size=5000)
    with count_queries() as asked:
        started = time.perf_counter()
        by_gpu = energy.measured(unlabelled)
        seconds = time.perf_counter() - started
    assert len(by_gpu) >= 0.9 * len(unlabelled), f"{len(by_gpu)} of {len(unlabelled)} measured by GPU"
    return {
        **by_label,
        "prom_energy_10k_jobs_by_gpu_s": round(seconds, 3),
        "prom_energy_by_gpu_queries": asked.call_count,
        "prom_energy_by_gpu_jobs_measured": len(by_gpu),
    }
