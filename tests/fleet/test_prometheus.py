"""GPU telemetry read from a real Prometheus (Debian's package, started for this module on its own
port and storage, scraping the GPU exporter simulator every quarter second), compared with what
the embedded scraper reads from the same simulated GPUs: the fleet's values, health decisions and
drains, energy per job; and what happens when Prometheus is unreachable or slow."""

from __future__ import annotations

import re
import socket
import threading
import time
from datetime import timedelta
from decimal import Decimal
from unittest import mock

import pytest
import requests
from django.utils import timezone

from billing import metering
from billing.models import UsageRecord
from factory.adapters.local import LocalAdapter
from factory.choices import ClusterKind
from factory.models import Cluster, Pool
from fleet import energy
from fleet.choices import Health, TelemetrySource
from fleet.devprometheus import LocalPrometheus, config_text, free_port, scrape_config
from fleet.inventory import local_simulated_nodes, register_node
from fleet.models import ClusterTelemetry, Gpu, GpuMinute, JobGpuEnergy, Node
from fleet.promql import PromQL
from fleet.scrape import scrape_cluster
from fleet.simulator import SimGpu, SimNode, Simulator, gpu_uuid, serve
from fleet.sources import run_cycle
from fleet.views import fleet_summary
from jobs import dispatch
from jobs.choices import JobState
from jobs.models import Job
from jobs.tasks import dispatch_jobs
from tests.support import admit

pytestmark = pytest.mark.django_db

INTERVAL = 0.25  # Prometheus's scrape interval here, seconds
LOCAL = ["local-h100", "local-a100"]  # the local cluster's simulated nodes (tests/conftest.py)
SLURM = ["slurm-gpu1", "slurm-gpu2"]
BIG = [f"big-{i}" for i in range(1, 7)]


@pytest.fixture(scope="module")
def front():
    """One exporter address for the whole module (Prometheus's targets stay put); each test
    puts its own simulator behind it."""
    server = serve(Simulator([]), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def prometheus(front):
    address = f"127.0.0.1:{front.server_address[1]}"
    config = config_text(
        scrape_config(address, LOCAL, labels={"fleet": "local"}, interval=INTERVAL, job="gpu-local"),
        scrape_config(address, SLURM, labels={"fleet": "slurm"}, interval=INTERVAL, job="gpu-slurm"),
        scrape_config(address, BIG, labels={"fleet": "big"}, interval=INTERVAL, job="gpu-big"),
    )
    server = LocalPrometheus(config)
    try:
        server.wait_for("up")
        yield server
    finally:
        server.stop()


def behind(front, prometheus, sim: Simulator) -> Simulator:
    """Serve `sim` at the module's exporter address, once Prometheus has scraped it whole."""
    front.RequestHandlerClass.simulator = sim
    sim.base_url = front.base_url
    since = time.time()
    wanted = sorted(sim.nodes)
    names = "|".join(wanted)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = prometheus.query(f'timestamp(up{{instance=~"{names}"}} == 1)')
        if len(found) == len(wanted) and min(float(r["value"][1]) for r in found) > since + 0.05:
            return sim
        time.sleep(0.05)
    raise AssertionError("Prometheus did not scrape the simulator")


def next_scrape(prometheus) -> None:
    """Wait until Prometheus has scraped every target again."""
    since = time.time()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        found = prometheus.query("min(timestamp(up))")
        if found and float(found[0]["value"][1]) > since:
            return
        time.sleep(0.05)


def use_prometheus(cluster: Cluster, prometheus, fleet: str, **extra) -> ClusterTelemetry:
    telemetry = ClusterTelemetry.of(cluster)
    telemetry.source = TelemetrySource.PROMETHEUS
    telemetry.set_prometheus({"url": prometheus.url, "match": {"fleet": fleet}, "timeout": 2.0, **extra})
    telemetry.save()
    return telemetry


def use_embedded(cluster: Cluster) -> None:
    ClusterTelemetry.objects.filter(cluster=cluster).update(source=TelemetrySource.EMBEDDED)


@pytest.fixture
def local_sim(front, prometheus, cluster, fast_rules):
    """The local cluster's two simulated nodes behind the module's exporter address, registered
    for the embedded scraper; values collected once and kept (as dcgm-exporter serves what it
    collected every DCGM_EXPORTER_INTERVAL), so that both sources read the same sample."""
    sim = Simulator(local_simulated_nodes(front.base_url), collect_seconds=3600)
    return behind(front, prometheus, sim)


def fleet_rows(cluster) -> dict:
    return {
        g.uuid: (
            g.node.name,
            g.node.gpu_type.slug if g.node.gpu_type else None,
            g.gpu_type.slug if g.gpu_type else None,
            g.index,
            g.model_name,
            g.health,
            g.temperature_c,
            g.power_w,
            g.utilisation_pct,
            g.memory_used_mib,
            g.energy_mj,
            g.job_id,
        )
        for g in Gpu.objects.filter(cluster=cluster).select_related("node__gpu_type", "gpu_type")
    }


def test_the_fleet_read_from_prometheus_is_the_one_the_embedded_scraper_reads(
    local_sim, prometheus, cluster, client, platform_admin
):
    embedded = scrape_cluster(cluster)
    assert (embedded.nodes, embedded.gpus, embedded.failed_nodes) == (2, 8, 0)
    scraped = fleet_rows(cluster)
    client.force_login(platform_admin)
    page = client.get("/clusters/local/fleet/").content.decode()
    Node.objects.filter(cluster=cluster).delete()  # Prometheus finds the nodes itself
    use_prometheus(cluster, prometheus, "local")
    report = run_cycle(cluster)
    assert (report.nodes, report.gpus, report.failed_nodes, report.unavailable) == (2, 8, 0, "")
    assert report.queries == 4
    assert fleet_rows(cluster) == scraped
    assert Node.objects.get(name="local-h100").instance == "local-h100"
    again = client.get("/clusters/local/fleet/").content.decode()
    rows = [line for line in page.splitlines() if "gpu-row" in line or "<td>" in line]
    assert rows and rows == [line for line in again.splitlines() if "gpu-row" in line or "<td>" in line]
    assert 'id="fleet-kw"' in again and "Telemetry unavailable" not in again


def inject(sim, node: str, fault: str, gpu: int | None = None) -> None:
    response = requests.post(
        f"{sim.base_url}/faults", json={"node": node, "fault": fault, "gpu": gpu}, timeout=5
    )
    assert response.status_code == 204


HEAT = re.compile(r"at \d+ °C")  # a hot GPU's temperature rises at every scrape, whoever makes it


def decisions(cluster) -> dict:
    """What the health rules decided: per GPU and node, health, reason and drain; per slot, the
    local backend's own drain."""
    gpus = {
        (g.node.name, g.index): (g.health, HEAT.sub("at … °C", g.health_reason), g.drained_by_portal)
        for g in Gpu.objects.filter(cluster=cluster).select_related("node")
    }
    nodes = {
        n.name: (n.health, n.health_reason, n.drained_by_portal) for n in Node.objects.filter(cluster=cluster)
    }
    adapter = LocalAdapter(cluster)
    slots = {t: sorted(adapter.slot_table(t).drained()) for t in ("h100", "a100")}
    return {"gpus": gpus, "nodes": nodes, "slots": slots}


def forget_fleet(cluster) -> None:
    """As if the portal had never seen the cluster: no nodes, GPUs or drains of its own."""
    Node.objects.filter(cluster=cluster).delete()
    adapter = LocalAdapter(cluster)
    for gpu_type in ("h100", "a100"):
        table = adapter.slot_table(gpu_type)
        for slot in table.drained():
            table.set_drained(slot, None)


def cycles(cluster, prometheus, count: int) -> list:
    reports = []
    for i in range(count):
        next_scrape(prometheus)  # every cycle reads a new sample, as the scraper's own do
        reports.append(run_cycle(cluster, now=timezone.now() + timedelta(seconds=i)))
    return reports


@pytest.fixture
def live_sim(front, prometheus, cluster, fast_rules):
    """The local cluster's nodes, their values moving at every scrape."""
    return behind(front, prometheus, Simulator(local_simulated_nodes(front.base_url)))


def test_health_decisions_and_drains_through_prometheus_are_the_embedded_scrapers(
    live_sim, prometheus, cluster, settings
):
    settings.FACTORY_GPU_HEALTH_RULES = (
        '{"resume_after_seconds": 600, "temperature_limit_c": 45, "temperature_samples": 2}'
    )
    for node, gpu, fault in [
        ("local-h100", 0, "xid79"),  # drain
        ("local-h100", 1, "xid63"),  # watch
        ("local-h100", 2, "xid13"),  # an application's error: healthy
        ("local-h100", 3, "row_remap_failure"),
        ("local-a100", 0, "ecc_dbe"),
        ("local-a100", 1, "hot"),  # warning after one sample over the limit, failed after two
    ]:
        inject(live_sim, node, fault, gpu)
    hot = gpu_uuid("local-a100", 1)
    prometheus.wait_for(f'DCGM_FI_DEV_GPU_TEMP{{UUID="{hot}"}} > 45', timeout=10)  # over from the first cycle
    cycles(cluster, prometheus, 3)
    embedded = decisions(cluster)
    forget_fleet(cluster)
    use_prometheus(cluster, prometheus, "local")
    reports = cycles(cluster, prometheus, 3)
    assert all(r.queries == 4 and not r.unavailable for r in reports)
    assert decisions(cluster) == embedded
    gpus = embedded["gpus"]
    assert gpus["local-h100", 0] == (Health.FAILED, "XID 79 (GPU has fallen off the bus) on GPU 0", True)
    assert gpus["local-h100", 1] == (Health.WARNING, "XID 63 (row remapping recorded) on GPU 1", False)
    assert gpus["local-h100", 2] == (Health.HEALTHY, "", False)
    assert gpus["local-h100", 3] == (Health.FAILED, "row-remap failure on GPU 3", True)
    assert gpus["local-a100", 0] == (Health.FAILED, "1 uncorrectable ECC error(s) on GPU 0", True)
    assert (
        gpus["local-a100", 1][0] == Health.FAILED and "over 45 °C for 3 sample(s)" in gpus["local-a100", 1][1]
    )
    assert embedded["slots"] == {"h100": [0, 3], "a100": [0, 1]}


def test_an_exporter_prometheus_cannot_scrape_is_judged_as_a_silent_one(
    live_sim, prometheus, cluster, settings
):
    settings.FACTORY_GPU_HEALTH_RULES = '{"exporter_silent_seconds": 1, "resume_after_seconds": 600}'
    run_cycle(cluster)
    inject(live_sim, "local-a100", "stop")
    silent = time.monotonic()
    run_cycle(cluster)
    warned = Node.objects.get(name="local-a100")
    time.sleep(max(0.0, 1.3 - (time.monotonic() - silent)))
    run_cycle(cluster)
    embedded = decisions(cluster)
    forget_fleet(cluster)
    requests.delete(f"{live_sim.base_url}/faults", timeout=5)
    use_prometheus(cluster, prometheus, "local")
    cycles(cluster, prometheus, 1)  # the nodes, as Prometheus shows them
    inject(live_sim, "local-a100", "stop")
    silent = time.monotonic()
    next_scrape(prometheus)
    report = run_cycle(cluster)
    assert report.failed_nodes == 1 and report.queries == 4
    assert Node.objects.get(name="local-a100").health == warned.health == Health.WARNING
    time.sleep(max(0.0, 1.3 - (time.monotonic() - silent)))
    next_scrape(prometheus)
    run_cycle(cluster)
    through_prometheus = decisions(cluster)
    assert through_prometheus["slots"] == embedded["slots"] == {"h100": [], "a100": [0, 1, 2, 3]}
    node = Node.objects.get(name="local-a100")
    assert node.health == Health.FAILED and node.drained_by_portal
    assert node.health_reason.startswith("GPU exporter silent for 1 s: Prometheus cannot scrape its exporter")
    assert embedded["nodes"]["local-a100"][0] == Health.FAILED and embedded["nodes"]["local-a100"][2]


def mj(use) -> float:
    return float(use.kwh * energy.MJ_PER_KWH)


def test_energy_per_job_through_prometheus_is_the_embedded_scrapers(
    live_sim, prometheus, cluster, make_job, job_scratch
):
    """The local backend's job: no exporter labels, so Prometheus is asked about the GPUs the
    portal saw the job on (its own record), over the job's run window."""
    gate = job_scratch / "gate"
    job = run_job(make_job, cluster, command=f"while [ ! -e {gate} ]; do sleep 0.05; done", gpu_count=2)
    until = time.monotonic() + 4
    while time.monotonic() < until:
        scrape_cluster(cluster)
        time.sleep(0.2)
    gate.touch()
    finish(job, cluster)
    scrape_cluster(cluster)
    rows = list(JobGpuEnergy.objects.filter(job=job, attempt=job.attempt))
    assert len(rows) == 2
    key = (job.pk, job.attempt)
    embedded = mj(energy.measured([key])[key])
    first, last = min(r.first_at for r in rows), max(r.last_at for r in rows)
    use_prometheus(cluster, prometheus, "local")
    next_scrape(prometheus)
    # Over the embedded scraper's own window, the two count the same energy, within what the
    # counters resolve: what the GPUs draw between two of Prometheus's samples.
    same_window = mj(energy.measured([key], {key: energy.Window(cluster.pk, first, last)})[key])
    resolution = 2 * 700 * 1000 * INTERVAL
    assert abs(same_window - embedded) <= resolution, (same_window, embedded)
    # Over the job's run, Prometheus also counts the edges no cycle of the scraper saw.
    run = mj(energy.measured([key])[key])
    unseen = ((first - job.started_at) + (job.ended_at - last)).total_seconds()
    assert embedded - resolution <= run <= embedded + 2 * 700 * 1000 * (unseen + 2 * INTERVAL), (
        run,
        embedded,
    )
    [line] = metering.lines_for_attempt(
        job, job.attempt, job.started_at, job.ended_at, "usage", metering.Pricing()
    )
    assert line.energy_measured and line.note == ""
    assert line.energy_kwh == (Decimal(run) / energy.MJ_PER_KWH * cluster.pue).quantize(Decimal("0.0001"))


def run_job(make_job, cluster, **spec) -> Job:
    job = make_job(**spec)
    admit(job, cluster)
    dispatch_jobs([job.pk])
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        dispatch.sync_cluster(cluster)
        job.refresh_from_db()
        if job.state == JobState.RUNNING:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job stuck in {job.state}: {job.reason}")


def finish(job, cluster) -> None:
    deadline = time.monotonic() + 15
    while not job.is_terminal and time.monotonic() < deadline:
        dispatch.sync_cluster(cluster)
        job.refresh_from_db()
        time.sleep(0.1)
    assert job.state == JobState.SUCCEEDED


def labelled_node(name: str) -> SimNode:
    return SimNode(name, [SimGpu(i, gpu_uuid(name, i), "h100") for i in range(4)])


@pytest.mark.parametrize("kind", [ClusterKind.SLURM, ClusterKind.KUBERNETES])
def test_energy_of_a_job_the_exporter_labels_needs_no_record_of_the_portal(
    kind, front, prometheus, make_job, h100, fast_rules
):
    cluster = Cluster.objects.create(slug="hpc", name="HPC", kind=kind, region="local")
    Pool.objects.create(cluster=cluster, gpu_type=h100, capacity=8)
    nodes = [labelled_node(name) for name in SLURM]
    sim = behind(front, prometheus, Simulator(nodes))
    for name in SLURM:
        register_node(cluster, name, f"{sim.base_url}/nodes/{name}/metrics", h100)
    job = make_job(gpu_count=4)
    pod = f"aif-{job.uid}"
    external_id = "4242" if kind == ClusterKind.SLURM else f"team-a/{pod}"
    on = [(nodes[0], 2), (nodes[0], 3), (nodes[1], 0), (nodes[1], 1)]  # two nodes, as a gang
    with sim.lock:
        for node, index in on:
            if kind == ClusterKind.SLURM:
                node.hpc_jobs[index] = "4242"
            else:
                node.pods[index] = ("team-a", f"{pod}-x7k2p")
    started = timezone.now()
    Job.objects.filter(pk=job.pk).update(
        state=JobState.RUNNING, cluster=cluster, external_id=external_id, started_at=started
    )
    until = time.monotonic() + 3
    while time.monotonic() < until:
        scrape_cluster(cluster)
        time.sleep(0.2)
    with sim.lock:
        for node, index in on:
            node.hpc_jobs.pop(index, None)
            node.pods.pop(index, None)
    ended = timezone.now()
    Job.objects.filter(pk=job.pk).update(state=JobState.SUCCEEDED, ended_at=ended)
    rows = JobGpuEnergy.objects.filter(job=job)
    assert sorted((r.gpu.node.name, r.gpu.index) for r in rows) == [(n.name, i) for n, i in on]
    key = (job.pk, job.attempt)
    embedded = mj(energy.measured([key])[key])
    unseen = (min(r.first_at for r in rows) - started) + (ended - max(r.last_at for r in rows))
    rows.delete()  # the exporter's labels are enough
    use_prometheus(cluster, prometheus, "slurm")
    next_scrape(prometheus)
    with count_queries() as asked:
        use = energy.measured([key])[key]
    assert asked.call_count == 1 and use.gpus == 4
    allowance = 4 * 700 * 1000 * (unseen.total_seconds() + 2 * INTERVAL)
    assert embedded - allowance <= mj(use) <= embedded + allowance, (mj(use), embedded)


def count_queries():
    return mock.patch.object(PromQL, "_post", autospec=True, side_effect=PromQL._post)


def test_queries_per_cycle_and_for_energy_do_not_grow_with_gpus_or_jobs(
    front, prometheus, cluster, h100, make_job, fast_rules
):
    big = Cluster.objects.create(slug="big", name="Big", kind=ClusterKind.SLURM, region="local")
    Pool.objects.create(cluster=big, gpu_type=h100, capacity=48)
    many = Simulator.uniform(len(BIG), 8, prefix="big", gpus_per_job=2)
    assert sorted(many.nodes) == BIG
    behind(front, prometheus, Simulator([*local_simulated_nodes(front.base_url), *many.nodes.values()]))
    started = timezone.now() - timedelta(seconds=30)
    jobs = [make_job(gpu_count=2) for _ in range(24)]
    for number, job in enumerate(jobs, start=1):
        Job.objects.filter(pk=job.pk).update(
            state=JobState.RUNNING, cluster=big, external_id=str(number), started_at=started
        )
    use_prometheus(cluster, prometheus, "local")
    use_prometheus(big, prometheus, "big")
    small, large = run_cycle(cluster), run_cycle(big)
    assert (small.gpus, large.gpus) == (8, 48)
    assert small.queries == large.queries == 4
    assert Gpu.objects.filter(cluster=big, job__isnull=False).count() == 48
    next_scrape(prometheus)
    with count_queries() as asked:
        one = energy.measured([(jobs[0].pk, 0)])
    with count_queries() as asked_many:
        all_of_them = energy.measured([(job.pk, 0) for job in jobs])
    assert len(one) == 1 and len(all_of_them) == 24
    assert asked.call_count == asked_many.call_count == 1
    # Without labels (the local backend's jobs), a query for up to a couple of hundred jobs.
    now = timezone.now()
    h100_gpu = Gpu.objects.get(uuid=gpu_uuid("local-h100", 0))
    local_jobs = [make_job() for _ in range(30)]
    JobGpuEnergy.objects.bulk_create(
        JobGpuEnergy(
            job=job, attempt=0, gpu=h100_gpu, gpu_uuid=h100_gpu.uuid, start_mj=0, end_mj=0,
            first_at=now - timedelta(seconds=2), last_at=now, busy_at=now,
        )
        for job in local_jobs
    )  # fmt: skip
    windows = {(j.pk, 0): energy.Window(cluster.pk, now - timedelta(seconds=3), now) for j in local_jobs}
    with count_queries() as asked_local:
        measured = energy.measured(windows, windows)
    assert len(measured) == 30 and asked_local.call_count == 1


@pytest.fixture
def hanging_port():
    """A server that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    yield listener.getsockname()[1]
    listener.close()


def test_an_unreachable_or_slow_prometheus_changes_nothing_says_so_and_recovers(
    live_sim, prometheus, cluster, client, platform_admin, owner, make_job, settings, hanging_port
):
    settings.FACTORY_GPU_HEALTH_RULES = '{"exporter_silent_seconds": 1, "resume_after_seconds": 0}'
    settings.FACTORY_METRICS_ALLOWED_NETWORKS = ["127.0.0.1/32"]
    telemetry = use_prometheus(cluster, prometheus, "local")
    assert run_cycle(cluster).unavailable == ""
    seen = {g.uuid: (g.sampled_at, g.health) for g in Gpu.objects.filter(cluster=cluster)}
    running = make_job()
    Job.objects.filter(pk=running.pk).update(
        state=JobState.RUNNING, cluster=cluster, started_at=timezone.now()
    )
    # Prometheus goes away, and meanwhile an exporter falls silent: nothing is judged on no data.
    inject(live_sim, "local-a100", "stop")
    closed = free_port()
    telemetry.set_prometheus({"url": f"http://127.0.0.1:{closed}"})
    telemetry.save()
    time.sleep(1.2)
    report = run_cycle(cluster)
    assert (
        report.unavailable
        == f"Prometheus at http://127.0.0.1:{closed}: connection failed: connection refused"
    )
    telemetry.refresh_from_db()
    down_since = telemetry.unavailable_since
    assert down_since is not None and telemetry.unavailable_reason == report.unavailable
    assert {g.uuid: (g.sampled_at, g.health) for g in Gpu.objects.filter(cluster=cluster)} == seen
    assert not Node.objects.filter(cluster=cluster).exclude(health=Health.HEALTHY).exists()
    assert LocalAdapter(cluster).slot_table("a100").drained() == {}
    client.force_login(platform_admin)
    page = client.get("/clusters/local/fleet/").content.decode()
    assert f"Telemetry unavailable since {down_since:%Y-%m-%d %H:%M:%S} UTC" in page
    assert "connection refused" in page and "nothing is drained until it answers again" in page
    metrics_text = client.get("/metrics").content.decode()
    assert 'factory_telemetry_unavailable{cluster="local",source="prometheus"} 1.0' in metrics_text
    # A slow one is as unavailable: the cycle gives up after the timeout.
    telemetry.set_prometheus({"url": f"http://127.0.0.1:{hanging_port}", "timeout": 0.5})
    telemetry.save()
    started = time.monotonic()
    report = run_cycle(cluster)
    assert time.monotonic() - started < 2 and report.unavailable.endswith("no answer within 0.5 s")
    telemetry.refresh_from_db()
    assert telemetry.unavailable_since == down_since  # unavailable since the first failure
    # Energy meanwhile: the estimate, and the ledger line says why.
    done = make_job()
    now = timezone.now()
    Job.objects.filter(pk=done.pk).update(
        state=JobState.SUCCEEDED, cluster=cluster, started_at=now - timedelta(hours=1), ended_at=now
    )
    [line] = metering.meter_release(done.pk, 0, cluster.pk, now - timedelta(hours=1), now, False)
    assert not line.energy_measured and line.energy_kwh == Decimal("0.8400")  # 700 W × 1 h × PUE 1.2
    assert UsageRecord.objects.get(pk=line.pk).note == (
        f"energy estimated: GPU telemetry unavailable since {down_since:%Y-%m-%d %H:%M} UTC"
    )
    client.force_login(owner)
    job_page = client.get(running.get_absolute_url()).content.decode()
    assert "Not measured now: GPU telemetry unavailable since" in job_page
    # Back by itself at the next cycle; the silent exporter is now judged, on Prometheus's word.
    telemetry.set_prometheus({"url": prometheus.url, "timeout": 2.0})
    telemetry.save()
    report = run_cycle(cluster)
    assert report.unavailable == "" and report.failed_nodes == 1
    telemetry.refresh_from_db()
    assert telemetry.unavailable_since is None and telemetry.unavailable_reason == ""
    node = Node.objects.get(name="local-a100")
    assert node.health == Health.FAILED and node.drained_by_portal
    client.force_login(platform_admin)
    assert "Telemetry unavailable" not in client.get("/clusters/local/fleet/").content.decode()
    assert 'factory_telemetry_unavailable{cluster="local",source="prometheus"} 0.0' in (
        client.get("/metrics").content.decode()
    )


def test_node_charts_and_the_days_energy_are_asked_of_prometheus(
    live_sim, prometheus, cluster, client, platform_admin
):
    use_prometheus(cluster, prometheus, "local")
    next_scrape(prometheus)
    run_cycle(cluster)
    assert not GpuMinute.objects.exists()  # no samples kept: Prometheus has them
    client.force_login(platform_admin)
    page = client.get("/clusters/local/nodes/local-h100/").content.decode()
    assert page.count("<svg") == 3 and page.count("<polyline") == 12
    assert "Exporter local-h100, read from Prometheus" in page
    today = fleet_summary(cluster)["kwh_today"]
    asked = prometheus.query(
        'sum(max by (UUID) (increase(DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{fleet="local"}[1d])))'
    )
    assert 0 < today <= float(asked[0]["value"][1]) / 3.6e9 * 1.01
    assert f'id="fleet-kwh">{today:.3f} kWh' in client.get("/clusters/local/fleet/").content.decode()


def test_a_running_jobs_page_shows_energy_from_prometheus_and_idle_gpus_from_its_cycles(
    live_sim, prometheus, cluster, make_job, job_scratch, client, owner, settings
):
    # Every GPU counts as idle here (under 101 %), and a hundredth of a minute is long enough.
    settings.FACTORY_GPU_HEALTH_RULES = '{"idle_utilisation_pct": 101, "idle_minutes": 0.01}'
    use_prometheus(cluster, prometheus, "local")
    gate = job_scratch / "gate"
    job = run_job(make_job, cluster, command=f"while [ ! -e {gate} ]; do sleep 0.05; done")
    cycles(cluster, prometheus, 3)
    assert JobGpuEnergy.objects.get(job=job).samples == 3
    client.force_login(owner)
    page = client.get(job.get_absolute_url()).content.decode()
    assert re.search(r"[0-9.]+ kWh measured by its 1 GPU' own counters", page)
    assert "Its GPUs have been idle (under 101 % utilisation)" in page
    gate.touch()
    finish(job, cluster)
