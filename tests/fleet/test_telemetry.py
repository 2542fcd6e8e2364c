"""A telemetry cycle against the GPU exporter simulator over HTTP, on PostgreSQL: samples, jobs on
GPUs (the local backend's real slots), energy, bad input, health that drains and resumes."""

from __future__ import annotations

import time
from datetime import timedelta
from decimal import Decimal

import pytest
import requests
from django.utils import timezone

from factory.adapters.local import LocalAdapter
from fleet.choices import Health
from fleet.models import Gpu, GpuMinute, JobGpuEnergy, Node
from fleet.scrape import energy_step, scrape_cluster
from fleet.simulator import gpu_uuid
from fleet.tasks import prune
from jobs import dispatch
from jobs.choices import JobState
from jobs.models import Job, Notification
from jobs.tasks import dispatch_jobs
from quotas.admission import Snapshot
from tests.support import admit

pytestmark = pytest.mark.django_db


def inject(sim, node: str, fault: str, gpu: int | None = None) -> None:
    response = requests.post(
        f"{sim.base_url}/faults", json={"node": node, "fault": fault, "gpu": gpu}, timeout=5
    )
    assert response.status_code == 204


def cycle(cluster, **kwargs):
    return scrape_cluster(cluster, **kwargs)


def gpu(node: str, index: int) -> Gpu:
    return Gpu.objects.get(uuid=gpu_uuid(node, index))


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


def test_a_cycle_stores_every_gpu_with_its_latest_sample_and_a_minute_rollup(simulator, cluster):
    report = cycle(cluster)
    assert (report.nodes, report.failed_nodes, report.gpus) == (2, 0, 8)
    h100 = gpu("local-h100", 2)
    assert h100.model_name == "NVIDIA H100 80GB HBM3" and h100.gpu_type.slug == "h100"
    assert h100.health == Health.HEALTHY and h100.temperature_c is not None and h100.power_w > 0
    cycle(cluster, now=timezone.now() + timedelta(seconds=1))
    minute = GpuMinute.objects.filter(gpu=h100).order_by("-minute").first()
    assert minute.samples >= 1 and minute.power_sum > 0


def test_the_job_on_a_gpu_is_the_local_backends_slot_holder_and_its_energy_is_measured(
    simulator, cluster, make_job, job_scratch
):
    gate = job_scratch / "gate"
    job = run_job(make_job, cluster, command=f"while [ ! -e {gate} ]; do sleep 0.1; done", gpu_count=2)
    cycle(cluster)
    on = Gpu.objects.filter(job=job).order_by("index")
    assert [g.index for g in on] == [0, 1] and all(g.node.name == "local-h100" for g in on)
    first = {g.uuid: g.energy_mj for g in on}
    time.sleep(0.3)
    cycle(cluster)
    rows = JobGpuEnergy.objects.filter(job=job, attempt=job.attempt)
    assert rows.count() == 2
    for row in rows:
        assert row.start_mj == first[row.gpu_uuid]
        assert row.measured_mj == row.end_mj - row.start_mj > 0  # no reset: the counter's own step
    gate.touch()


def test_a_counter_reset_loses_nothing_but_the_interval_and_adds_nothing_unmeasured(
    simulator, cluster, make_job, job_scratch
):
    gate = job_scratch / "gate"
    job = run_job(make_job, cluster, command=f"while [ ! -e {gate} ]; do sleep 0.1; done")
    cycle(cluster)
    time.sleep(0.2)
    cycle(cluster)
    row = JobGpuEnergy.objects.get(job=job)
    before = row.measured_mj
    inject(simulator, "local-h100", "counter_reset", 0)
    time.sleep(0.2)
    cycle(cluster)
    row.refresh_from_db()
    assert row.resets == 1
    assert before < row.measured_mj < before + 2500 * 1000 * 5  # what was used since the reset
    gate.touch()


def test_energy_steps_refuse_what_no_gpu_could_draw():
    assert energy_step(1_000, 1_500, 10) == (500, False, False)
    assert energy_step(10**12, 2_000, 10) == (2_000, True, False)  # a reset: counts from zero
    assert energy_step(10**12, 10**11, 10) == (0, False, True)  # backwards, too big to be a reset
    assert energy_step(1_000, 10**12, 10) == (0, False, True)  # a jump no GPU could draw
    assert energy_step(None, 5_000, 10) == (0, False, False)


@pytest.mark.parametrize("fault", ["error", "malformed", "stop", "hang"])
def test_a_bad_exporter_is_counted_and_never_stops_the_other_node(simulator, cluster, fault):
    cycle(cluster)
    before = {g.uuid: g.sampled_at for g in Gpu.objects.all()}
    inject(simulator, "local-a100", fault)
    started = time.monotonic()
    report = cycle(cluster, now=timezone.now() + timedelta(seconds=5))
    assert time.monotonic() - started < 5  # a hang costs the timeout, not the cycle
    assert (report.failed_nodes, report.gpus) == (1, 4)
    node = Node.objects.get(name="local-a100")
    assert node.scrape_errors == 1 and node.scrape_error
    assert all(g.sampled_at == before[g.uuid] for g in Gpu.objects.filter(node=node))
    assert all(g.sampled_at > before[g.uuid] for g in Gpu.objects.filter(node__name="local-h100"))


def test_xid_79_fails_the_gpu_drains_its_slot_tells_admins_and_admission_stops_counting_it(
    simulator, cluster, platform_admin, quotas
):
    platform_admin.email = "ops@example.org"
    platform_admin.save()
    cycle(cluster)
    inject(simulator, "local-h100", "xid79", 3)
    cycle(cluster)
    failed = gpu("local-h100", 3)
    assert failed.health == Health.FAILED
    assert failed.health_reason == "XID 79 (GPU has fallen off the bus) on GPU 3"
    assert failed.drained_by_portal and failed.drain_reason.startswith("factory: XID 79")
    table = LocalAdapter(cluster).slot_table("h100")
    assert list(table.drained()) == [3]
    assert Gpu.objects.filter(health=Health.FAILED).count() == 1
    capacity = {p.cluster: p.capacity for p in Snapshot().pools[failed.gpu_type_id]}
    assert capacity == {"local": 3}
    notice = Notification.objects.get(user=platform_admin)
    assert notice.event == "fleet" and "GPU 3 of local-h100 drained" in notice.subject
    # Healthy again (the windowed XID count is empty; the gauge keeps its last value): resumed.
    requests.delete(f"{simulator.base_url}/faults", timeout=5)
    cycle(cluster, now=timezone.now() + timedelta(seconds=1))
    cycle(cluster, now=timezone.now() + timedelta(seconds=2))
    failed.refresh_from_db()
    assert failed.health == Health.HEALTHY and not failed.drained_by_portal
    assert table.drained() == {}


def test_the_portal_never_resumes_a_slot_someone_else_took_out(simulator, cluster):
    cycle(cluster)
    table = LocalAdapter(cluster).slot_table("h100")
    table.set_drained(1, "operator: fan replaced tomorrow")
    inject(simulator, "local-h100", "row_remap_failure", 1)
    cycle(cluster)
    requests.delete(f"{simulator.base_url}/faults", timeout=5)
    cycle(cluster, now=timezone.now() + timedelta(seconds=1))
    cycle(cluster, now=timezone.now() + timedelta(seconds=2))
    assert table.drained()[1] == "operator: fan replaced tomorrow"
    assert gpu("local-h100", 1).drained_by_portal  # still counted out until its owner resumes it


def test_temperature_over_the_limit_warns_then_fails_after_n_samples(simulator, cluster, settings):
    settings.FACTORY_GPU_HEALTH_RULES = '{"temperature_limit_c": 40, "temperature_samples": 3}'
    cycle(cluster)
    inject(simulator, "local-a100", "hot", 2)
    states = []
    for i in range(4):
        cycle(cluster, now=timezone.now() + timedelta(seconds=i + 1))
        states.append(gpu("local-a100", 2).health)
    assert Health.WARNING in states and states[-1] == Health.FAILED
    assert "over 40 °C for" in gpu("local-a100", 2).health_reason


def test_an_exporter_silent_too_long_fails_and_drains_its_node(simulator, cluster, settings):
    settings.FACTORY_GPU_HEALTH_RULES = '{"exporter_silent_seconds": 30, "resume_after_seconds": 0}'
    cycle(cluster)
    inject(simulator, "local-a100", "stop")
    cycle(cluster, now=timezone.now() + timedelta(seconds=5))
    assert Node.objects.get(name="local-a100").health == Health.WARNING
    cycle(cluster, now=timezone.now() + timedelta(seconds=40))
    node = Node.objects.get(name="local-a100")
    assert node.health == Health.FAILED and "GPU exporter silent for" in node.health_reason
    assert node.drained_by_portal
    assert sorted(LocalAdapter(cluster).slot_table("a100").drained()) == [0, 1, 2, 3]


def test_a_job_that_failed_on_a_gpu_the_portal_drained_is_not_billed_and_runs_again_once(
    simulator, cluster, make_job, job_scratch, django_capture_on_commit_callbacks
):
    from billing.models import UsageKind, UsageRecord

    gate = job_scratch / "gate"
    job = run_job(make_job, cluster, command=f"while [ ! -e {gate} ]; do sleep 0.1; done; exit 3")
    cycle(cluster)
    time.sleep(0.2)
    cycle(cluster)
    gate.touch()  # the job dies, as one does when its GPU falls off the bus
    with django_capture_on_commit_callbacks(execute=True):
        deadline = time.monotonic() + 15
        while job.state != JobState.FAILED and time.monotonic() < deadline:
            dispatch.sync_cluster(cluster)
            job.refresh_from_db()
            time.sleep(0.1)
    assert UsageRecord.objects.filter(job=job, kind=UsageKind.USAGE).exists()
    slot = JobGpuEnergy.objects.get(job=job).gpu.index
    inject(simulator, "local-h100", "xid79", slot)
    with django_capture_on_commit_callbacks(execute=True):
        cycle(cluster)
    job.refresh_from_db()
    assert (job.state, job.attempt, job.fault_requeues) == (JobState.PENDING, 1, 1)
    messages = list(job.events.values_list("message", flat=True))
    assert any("not billed" in m and "XID 79" in m for m in messages)
    assert any("requeued once after a hardware fault" in m for m in messages)
    charged = sum(r.amount for r in UsageRecord.objects.filter(job=job, attempt=0))
    assert charged == 0 and UsageRecord.objects.filter(job=job, kind=UsageKind.PLATFORM_FAULT).exists()


def test_ledger_line_uses_measured_energy_and_says_so(simulator, cluster, make_job, job_scratch):
    from billing import metering
    from billing.models import GridIntensity

    GridIntensity.objects.update_or_create(region="local", defaults={"grams_co2e_per_kwh": Decimal("250")})
    job = make_job()
    now = timezone.now()
    Job.objects.filter(pk=job.pk).update(
        state=JobState.SUCCEEDED, cluster=cluster, started_at=now - timedelta(hours=1), ended_at=now
    )
    job.refresh_from_db()
    h100 = cycle(cluster) and gpu("local-h100", 0)
    JobGpuEnergy.objects.create(
        job=job, attempt=0, gpu=h100, gpu_uuid=h100.uuid, start_mj=10**9, end_mj=10**9 + 1_800_000_000,
        measured_mj=1_800_000_000, samples=360, first_at=now, last_at=now, busy_at=now,
    )  # fmt: skip
    [line] = metering.lines_for_attempt(job, 0, job.started_at, job.ended_at, "usage", metering.Pricing())
    assert line.energy_measured
    assert line.energy_kwh == Decimal("0.6000")  # 0.5 kWh measured × PUE 1.2
    assert line.co2e_kg == Decimal("0.1500")
    [estimate] = metering.lines_for_attempt(job, 1, job.started_at, job.ended_at, "usage", metering.Pricing())
    assert not estimate.energy_measured and estimate.energy_kwh == Decimal("0.8400")


def test_rollups_older_than_the_retention_are_pruned(simulator, cluster, settings):
    settings.FACTORY_TELEMETRY_RETENTION_DAYS = 14
    cycle(cluster)
    cycle(cluster, now=timezone.now() - timedelta(days=15))
    assert GpuMinute.objects.filter(minute__lt=timezone.now() - timedelta(days=14)).exists()
    assert prune() == 8
    assert not GpuMinute.objects.filter(minute__lt=timezone.now() - timedelta(days=14)).exists()


def test_a_running_job_on_a_gpu_that_fails_goes_back_to_pending_once_its_time_not_billed(
    simulator, cluster, make_job, job_scratch, django_capture_on_commit_callbacks
):
    gate = job_scratch / "gate"
    job = run_job(make_job, cluster, command=f"while [ ! -e {gate} ]; do sleep 0.1; done")
    cycle(cluster)
    slot = Gpu.objects.get(job=job).index
    inject(simulator, "local-h100", "xid48", slot)
    with django_capture_on_commit_callbacks(execute=True):
        cycle(cluster)
    job.refresh_from_db()
    assert (job.state, job.attempt, job.fault_requeues) == (JobState.PENDING, 1, 1)
    assert "the hardware it ran on failed (XID 48 (double-bit ECC error) on GPU" in job.reason
    gate.touch()


def test_a_cycle_runs_as_one_task_per_shard_of_nodes_and_is_claimed_once(
    simulator, cluster, settings, monkeypatch
):
    from fleet import tasks
    from fleet.models import ClusterTelemetry

    settings.FACTORY_TELEMETRY_SHARD_NODES = 1
    queued = []
    monkeypatch.setattr(tasks.scrape_shard, "delay", lambda *args: queued.append(args))
    assert tasks.scrape_due() == {"local": 2}
    assert tasks.scrape_due() == {}  # started, not over: not due again
    assert ClusterTelemetry.objects.get(cluster=cluster).shards_pending == 2
    assert sorted(len(node_ids) for _, node_ids in queued) == [1, 1]
    for args in queued:
        tasks.scrape_shard(*args)
    telemetry = ClusterTelemetry.objects.get(cluster=cluster)
    assert telemetry.shards_pending == 0 and telemetry.cycle_seconds > 0
    assert Gpu.objects.filter(sampled_at__isnull=False).count() == 8  # both nodes, 4 GPUs each
    # Due again once the interval has passed; a cycle whose shard never reported is started afresh
    # once it has stalled longer than a task may run.
    later = telemetry.scraped_at + timedelta(seconds=settings.FACTORY_TELEMETRY_INTERVAL)
    assert tasks.due_clusters(later) == [cluster]
    ClusterTelemetry.objects.filter(pk=telemetry.pk).update(shards_pending=1)
    assert tasks.due_clusters(later) == []
    stalled = later + timedelta(seconds=settings.FACTORY_TASK_TIME_LIMIT + settings.FACTORY_TASK_KILL_GRACE)
    assert tasks.due_clusters(stalled) == [cluster]


def test_a_shard_stores_and_judges_its_own_nodes_only(simulator, cluster):
    cycle(cluster)
    h100 = Node.objects.get(name="local-h100")
    inject(simulator, "local-a100", "xid79", 1)
    inject(simulator, "local-h100", "xid79", 2)
    before = {g.uuid: g.sampled_at for g in Gpu.objects.all()}
    cycle(cluster, nodes=[h100], now=timezone.now() + timedelta(seconds=1))
    for g in Gpu.objects.all():
        assert (g.sampled_at != before[g.uuid]) == (g.node_id == h100.pk)
    assert gpu("local-h100", 2).drained_by_portal and gpu("local-h100", 2).health == Health.FAILED
    assert not gpu("local-a100", 1).drained_by_portal and gpu("local-a100", 1).health == Health.HEALTHY


def test_the_energy_of_the_day_adds_up_cycle_by_cycle_and_starts_afresh_each_day(simulator, cluster):
    from fleet.models import ClusterTelemetry
    from fleet.scrape import add_energy_of_the_day

    now = timezone.now()
    cycle(cluster, now=now)
    cycle(cluster, now=now + timedelta(seconds=5))
    telemetry = ClusterTelemetry.objects.get(cluster=cluster)
    rollups = GpuMinute.objects.filter(minute__gte=now.replace(second=0, microsecond=0))
    assert telemetry.energy_day_mj == sum(rollups.values_list("energy_mj", flat=True)) > 0
    add_energy_of_the_day(cluster, now + timedelta(days=1), 7)
    telemetry.refresh_from_db()
    assert (telemetry.energy_day, telemetry.energy_day_mj) == ((now + timedelta(days=1)).date(), 7)


def test_every_health_change_drain_and_resume_is_kept_as_the_hardwares_history(
    simulator, cluster, client, platform_admin, settings
):
    """What an operator reads before sending a card back: when each GPU or exporter went bad and
    why, when the portal drained and resumed it; on the node page, newest first; pruned after
    FACTORY_HEALTH_HISTORY_DAYS."""
    from fleet.models import HealthEvent

    cycle(cluster)
    assert not HealthEvent.objects.exists()  # all healthy from the start: nothing happened
    inject(simulator, "local-h100", "xid79", 3)
    cycle(cluster, now=timezone.now() + timedelta(seconds=1))
    requests.delete(f"{simulator.base_url}/faults", timeout=5)
    cycle(cluster, now=timezone.now() + timedelta(seconds=2))
    cycle(cluster, now=timezone.now() + timedelta(seconds=3))
    card = gpu("local-h100", 3)
    history = list(
        HealthEvent.objects.filter(gpu=card).order_by("at", "id").values_list("kind", "health", "reason")
    )
    assert history == [
        ("health", "failed", "XID 79 (GPU has fallen off the bus) on GPU 3"),
        ("drained", "", "factory: XID 79 (GPU has fallen off the bus) on GPU 3"),
        ("health", "healthy", ""),
        ("resumed", "", ""),
    ]
    assert set(HealthEvent.objects.values_list("gpu_uuid", flat=True)) == {card.uuid}

    inject(simulator, "local-a100", "stop")
    cycle(cluster, now=timezone.now() + timedelta(seconds=4))
    exporter = HealthEvent.objects.get(node__name="local-a100")
    assert (exporter.gpu, exporter.kind, exporter.health) == (None, "health", "warning")
    assert exporter.reason.startswith("GPU exporter:")

    client.force_login(platform_admin)
    page = client.get("/clusters/local/nodes/local-h100/").content.decode()
    section = page.split('id="health-history"')[1]
    assert (
        section.index("Resumed")
        < section.index("Healthy again")
        < section.index("Drained")
        < section.index("Failed")
    )
    assert "XID 79 (GPU has fallen off the bus) on GPU 3" in section

    settings.FACTORY_HEALTH_HISTORY_DAYS = 30
    HealthEvent.objects.filter(kind="drained").update(at=timezone.now() - timedelta(days=31))
    prune()
    assert not HealthEvent.objects.filter(kind="drained").exists() and HealthEvent.objects.count() == 4
