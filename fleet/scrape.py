"""One telemetry cycle of a cluster: fetch every node's exporter (bounded concurrency, timeouts),
parse, store the latest sample per GPU, the minute rollups and the energy of the jobs on them,
then judge health (fleet.health acts on the verdicts).

A node whose exporter hangs, answers 500 or answers garbage is logged and counted, and changes
nothing but its own error count: the other nodes' samples are stored as usual. A value that is
NaN, infinite or negative is left out. An energy counter that goes backwards is a reset when what
it shows could have been used since the last sample (it is then counted from zero), and a glitch
otherwise (nothing is added, and counting resumes from the new value); so is a jump forward that
no GPU could draw. Neither ever adds energy that was not measured.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import urllib3
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Case, F, Value, When
from django.utils import timezone

from factory.adapters import BackendError
from factory.models import Cluster
from jobs.choices import AT_BACKEND_STATES
from jobs.models import Job

from . import metrics
from .choices import Health
from .exposition import Exposition, ExpositionError, GpuSample, parse
from .models import ClusterTelemetry, Gpu, HealthEvent, HealthEventKind, JobGpuEnergy, Node
from .rules import Rules, judge, site_rules

log = logging.getLogger(__name__)

# No GPU draws more than this: a counter step that would need more is not energy.
MAX_GPU_WATTS = 2500.0
MAX_BODY_BYTES = 8 * 1024 * 1024
# urllib3 itself (requests' transport): requests' sessions cost twice its CPU per fetch, a second
# of a 1,000-node cycle. One kept-alive connection per exporter being fetched at once; no retries
# (a node that fails is counted and tried next cycle); no proxy from the environment (as
# Prometheus: exporters are reached directly).
_pool = urllib3.PoolManager(maxsize=settings.FACTORY_TELEMETRY_CONCURRENCY, retries=False)


@dataclasses.dataclass
class NodeResult:
    node: Node
    exposition: Exposition | None = None
    error: str = ""
    fetch_seconds: float = 0.0
    parse_seconds: float = 0.0
    # Since when the exporter has been silent, where the source knows better than the node's
    # last good answer (a Prometheus that saw the target down all along the silence limit).
    silent_since: datetime | None = None


@dataclasses.dataclass
class CycleReport:
    cluster: str
    nodes: int = 0
    failed_nodes: int = 0
    gpus: int = 0
    series: int = 0
    problems: int = 0
    fetch_seconds: float = 0.0  # wall clock of fetch and parse, all nodes
    store_seconds: float = 0.0
    health_seconds: float = 0.0
    changed: list[int] = dataclasses.field(default_factory=list)  # GPU ids whose health moved
    queries: int = 0  # asked of a Prometheus source
    unavailable: str = ""  # why the source gave nothing this cycle

    @property
    def seconds(self) -> float:
        return self.fetch_seconds + self.store_seconds + self.health_seconds


def fetch_text(url: str, timeout: float) -> str:
    """One exporter's answer; raises on anything but a 200 with text. A kept-alive connection the
    exporter closed meanwhile (it answers nothing) is tried once more on a new connection, as Go's
    HTTP client (Prometheus's) does for a GET; a timeout is not tried again."""
    try:
        return _fetch_once(url, timeout)
    except urllib3.exceptions.ProtocolError:
        return _fetch_once(url, timeout, retry=True)


def _fetch_once(url: str, timeout: float, retry: bool = False) -> str:
    headers = {"Connection": "close"} if retry else None
    response = _pool.request(
        "GET",
        url,
        headers=headers,
        timeout=urllib3.Timeout(connect=timeout, read=timeout),
        preload_content=False,
    )
    try:
        if response.status != 200:
            raise OSError(f"HTTP {response.status}")
        deadline = time.monotonic() + timeout
        chunks, size = [], 0
        for chunk in response.stream(65536):
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise OSError(f"answer larger than {MAX_BODY_BYTES} bytes")
            if time.monotonic() > deadline:  # an exporter that trickles is as good as one that hangs
                raise OSError(f"no complete answer within {timeout:g} s")
        return b"".join(chunks).decode("utf-8", errors="replace")
    finally:
        response.release_conn()


def scrape_node(node: Node, timeout: float, fetch: Callable[[str, float], str] = fetch_text) -> NodeResult:
    result = NodeResult(node)
    started = time.perf_counter()
    try:
        text = fetch(node.exporter_url, timeout)
    except (OSError, urllib3.exceptions.HTTPError) as exc:
        result.error = _short(exc)
        result.fetch_seconds = time.perf_counter() - started
        return result
    parsed = time.perf_counter()
    result.fetch_seconds = parsed - started
    try:
        result.exposition = parse(text)
    except ExpositionError as exc:
        result.error = str(exc)[:300]
    result.parse_seconds = time.perf_counter() - parsed
    return result


def _short(exc: Exception) -> str:
    if isinstance(exc, urllib3.exceptions.TimeoutError):
        return "no answer within the timeout"
    if isinstance(exc, urllib3.exceptions.ProtocolError | urllib3.exceptions.NewConnectionError):
        return "connection failed or closed without an answer"
    return str(exc)[:300] or type(exc).__name__


def fetch_all(
    nodes: list[Node], *, timeout: float | None = None, concurrency: int | None = None, fetch=fetch_text
):
    timeout = timeout or settings.FACTORY_TELEMETRY_TIMEOUT
    workers = max(1, min(concurrency or settings.FACTORY_TELEMETRY_CONCURRENCY, len(nodes) or 1))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="scrape") as pool:
        return list(pool.map(lambda node: scrape_node(node, timeout, fetch), nodes))


# --- energy -------------------------------------------------------------------------------------


def energy_step(previous: int | None, current: int, seconds: float) -> tuple[int, bool, bool]:
    """(mJ used since the previous reading, whether the counter was reset, whether the step was
    refused as impossible). The notes' rule: a counter that drops was reset, and shows what was
    used since; checked here against what a GPU could draw in the time."""
    if previous is None:
        return 0, False, False
    ceiling = MAX_GPU_WATTS * max(seconds, 1.0) * 1000
    if current >= previous:
        step = current - previous
        return (0, False, True) if step > ceiling else (step, False, False)
    if current <= ceiling:
        return current, True, False
    return 0, False, True


# --- job ↔ GPU ----------------------------------------------------------------------------------


class JobMap:
    """Which job runs on a GPU: the sample's own labels (`hpc_job` from Slurm's job-mapping files,
    `pod`/`namespace` on Kubernetes), else the backend's own account (the local backend's slots,
    `scontrol show job -d`)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.jobs: dict[str, tuple[int, int]] = {}
        for pk, external_id, uid, attempt in Job.objects.filter(
            cluster=cluster, state__in=AT_BACKEND_STATES
        ).values_list("pk", "external_id", "uid", "attempt"):
            if external_id:
                self.jobs[external_id] = (pk, attempt)
            key = str(uid) if attempt == 0 else f"{uid}-r{attempt}"
            self.jobs.setdefault(key, (pk, attempt))
        self._backend: dict[tuple[str, int], str] | None = None

    def backend(self) -> dict[tuple[str, int], str]:
        if self._backend is None:
            self._backend = {}
            if self.jobs:
                try:
                    self._backend = self.cluster.adapter().gpu_jobs()
                except (BackendError, ValueError) as exc:
                    log.warning("cannot tell which jobs run on the GPUs of %s: %s", self.cluster, exc)
        return self._backend

    def job_for(self, node: Node, sample: GpuSample) -> tuple[int, int] | None:
        if not self.jobs:
            return None
        for external_id in sorted(sample.hpc_jobs):
            if external_id in self.jobs:
                return self.jobs[external_id]
        if sample.pod and sample.namespace:
            job_name = sample.pod.rsplit("-", 1)[0]
            found = self.jobs.get(f"{sample.namespace}/{job_name}")
            if found:
                return found
        external_id = self.backend().get((node.name, sample.index))
        return self.jobs.get(external_id) if external_id else None


# --- the cycle ----------------------------------------------------------------------------------


def scrape_cluster(
    cluster: Cluster, *, now: datetime | None = None, fetch=fetch_text, nodes: list[Node] | None = None
) -> CycleReport:
    """One cycle of the cluster's nodes, or of `nodes` only: a shard of a big cluster's cycle
    (tasks.scrape_shard), which stores and judges its own nodes' GPUs and nothing else."""
    report = CycleReport(cluster.slug)
    whole = nodes is None
    if whole:
        nodes = list(Node.objects.filter(cluster=cluster).select_related("gpu_type"))
    started = time.perf_counter()
    results = fetch_all(nodes, fetch=fetch)
    report.fetch_seconds = time.perf_counter() - started
    now = now or timezone.now()
    started = time.perf_counter()
    ingest(cluster, results, now, report)
    report.store_seconds = time.perf_counter() - started
    started = time.perf_counter()
    from . import health

    health.act(cluster, now, nodes=None if whole else nodes)
    report.health_seconds = time.perf_counter() - started
    if whole:  # a shard's task reports its part (tasks.finish_shard)
        ClusterTelemetry.objects.update_or_create(
            cluster=cluster,
            defaults={"scraped_at": now, "cycle_seconds": report.seconds, "shards_pending": 0},
        )
        metrics.observe_cycle(report)
    return report


def ingest(
    cluster: Cluster,
    results: list[NodeResult],
    now: datetime,
    report: CycleReport,
    *,
    keep_rollups: bool = True,
) -> None:
    """Store what a cycle read, whatever its source, and judge it. Without `keep_rollups` no minute
    rollups are kept (a source that keeps the samples itself is asked for them instead)."""
    rules = site_rules()
    report.nodes = len(results)
    node_ids = [result.node.pk for result in results]
    ok_nodes, failed = [], []
    for result in results:
        if result.exposition is None:
            failed.append(result)
            log.warning("GPU exporter of %s: %s", result.node, result.error)
            metrics.scrape_error(cluster.slug, result.error)
        else:
            ok_nodes.append(result)
            report.series += result.exposition.series
            for problem in result.exposition.problems:
                report.problems += 1
                log.warning("GPU exporter of %s: %s", result.node, problem)
                metrics.scrape_error(cluster.slug, "bad series")
    report.failed_nodes = len(failed)
    loaded = Gpu.objects.filter(cluster=cluster, node_id__in=node_ids).only(
        "node", "uuid", "index", *GPU_SAMPLE_FIELDS
    )
    gpus = {g.uuid: g for g in loaded}
    _add_new_gpus(cluster, ok_nodes, gpus)
    job_map = JobMap(cluster)
    energy = _energy_rows(cluster, gpus, node_ids)
    gpu_rows: list[Gpu] = []
    rollups: list[tuple] = []
    energy_new: list[JobGpuEnergy] = []
    energy_changed: list[JobGpuEnergy] = []
    events: list[HealthEvent] = []
    minute = now.replace(second=0, microsecond=0)
    seen: set[str] = set()
    shard = set(node_ids)
    for result in ok_nodes:
        node = result.node
        for sample in result.exposition.gpus.values():
            gpu = gpus.get(sample.uuid)
            if gpu is None or sample.uuid in seen or gpu.node_id not in shard:
                continue  # the same UUID on two nodes: the first one's
            seen.add(sample.uuid)
            report.gpus += 1
            seconds = (now - gpu.sampled_at).total_seconds() if gpu.sampled_at else 0.0
            step = 0
            if sample.energy_mj is not None:
                step, reset, refused = energy_step(gpu.energy_mj, sample.energy_mj, seconds)
                if refused:
                    log.warning(
                        "%s: energy counter jumped from %s to %s mJ: ignored",
                        gpu,
                        gpu.energy_mj,
                        sample.energy_mj,
                    )
                    metrics.scrape_error(cluster.slug, "energy counter jump")
                elif reset:
                    log.info("%s: energy counter reset", gpu)
            job = job_map.job_for(node, sample)
            if _apply_sample(gpu, sample, now, job, rules):
                report.changed.append(gpu.pk)
                events.append(health_changed(cluster, gpu, now))
            gpu_rows.append(gpu)
            if keep_rollups and (sample.temperature_c is not None or sample.power_w is not None):
                rollups.append(
                    (
                        gpu.pk,
                        minute,
                        sample.temperature_c or 0.0,
                        sample.power_w or 0.0,
                        sample.utilisation_pct or 0.0,
                        sample.memory_used_mib or 0.0,
                        step,
                    )
                )
            if job is not None and sample.energy_mj is not None:
                _account_job_energy(energy, energy_new, energy_changed, job, gpu, sample, now, rules)
    with transaction.atomic():
        _save_gpus(gpu_rows)
        _save_rollups(rollups)
        add_energy_of_the_day(cluster, now, sum(rollup[-1] for rollup in rollups))
        JobGpuEnergy.objects.bulk_create(energy_new, ignore_conflicts=True)
        update_rows(JobGpuEnergy, energy_changed, ENERGY_FIELDS)
        events += _save_nodes(cluster, ok_nodes, failed, now, rules)
        HealthEvent.objects.bulk_create(events)
        # A GPU no sample was read for this cycle runs no job the portal can tell.
        unread = Gpu.objects.filter(cluster=cluster, node_id__in=node_ids, job__isnull=False)
        unread.exclude(sampled_at=now).update(job=None)


def _add_new_gpus(cluster: Cluster, results: list[NodeResult], gpus: dict[str, Gpu]) -> None:
    new = []
    for result in results:
        for sample in result.exposition.gpus.values():
            if sample.uuid not in gpus:
                new.append(
                    Gpu(
                        node=result.node,
                        cluster=cluster,
                        gpu_type=result.node.gpu_type,
                        index=sample.index,
                        uuid=sample.uuid,
                        model_name=sample.model_name[:100],
                    )
                )
                gpus[sample.uuid] = new[-1]
    if new:
        Gpu.objects.bulk_create(new, ignore_conflicts=True)
        for gpu in Gpu.objects.filter(uuid__in=[g.uuid for g in new]):
            gpus[gpu.uuid] = gpu


def _apply_sample(gpu: Gpu, sample: GpuSample, now: datetime, job, rules: Rules) -> bool:
    """Take a GPU's sample; whether its health moved."""
    verdict = judge(sample, hot_samples=gpu.hot_samples, last_xid=gpu.last_xid, rules=rules)
    before = gpu.health
    next_health(gpu, verdict.health, verdict.reason, now, rules)
    gpu.hot_samples = min(verdict.hot_samples, 1000)
    gpu.last_xid = sample.xid_last
    gpu.sampled_at = now
    gpu.temperature_c = sample.temperature_c
    gpu.power_w = sample.power_w
    gpu.utilisation_pct = sample.utilisation_pct
    gpu.memory_used_mib = sample.memory_used_mib
    if sample.energy_mj is not None:
        gpu.energy_mj = sample.energy_mj
    gpu.job_id = job[0] if job else None
    return gpu.health != before


def health_changed(cluster: Cluster, thing: Gpu | Node, now: datetime) -> HealthEvent:
    return HealthEvent.of(
        cluster.pk, thing, HealthEventKind.HEALTH, now, health=thing.health, reason=thing.health_reason
    )


def next_health(thing, health: str, reason: str, now: datetime, rules: Rules) -> None:
    """Move a GPU or node to what its latest verdict says. A failure is sticky: it ends only
    after the verdicts have been fine for `resume_after_seconds`."""
    if health == Health.FAILED or (health == Health.WARNING and thing.health == Health.FAILED):
        if thing.health != Health.FAILED:
            thing.health_since = now
        if health == Health.FAILED:
            thing.health_reason = reason[:300]
        thing.health = Health.FAILED
        thing.clean_since = None
        return
    if thing.health == Health.FAILED:
        thing.clean_since = thing.clean_since or now
        if (now - thing.clean_since).total_seconds() < rules.resume_after_seconds:
            return
    if thing.health != health:
        thing.health_since = now
    thing.health, thing.health_reason, thing.clean_since = health, reason[:300], None


def _energy_rows(
    cluster: Cluster, gpus: dict[str, Gpu], node_ids: list[int]
) -> dict[tuple[int, int, str], JobGpuEnergy]:
    """The energy rows of the jobs on these nodes' GPUs, or that may have started there."""
    job_ids = {g.job_id for g in gpus.values() if g.job_id}
    active = Job.objects.filter(cluster=cluster, state__in=AT_BACKEND_STATES).values_list("pk", flat=True)
    rows = JobGpuEnergy.objects.filter(job_id__in=job_ids | set(active), gpu__node_id__in=node_ids)
    rows = rows.only("job", "attempt", "gpu_uuid", *ENERGY_FIELDS)
    return {(r.job_id, r.attempt, r.gpu_uuid): r for r in rows}


def _account_job_energy(rows, new, changed, job, gpu: Gpu, sample: GpuSample, now, rules: Rules) -> None:
    job_id, attempt = job
    util = sample.utilisation_pct or 0.0
    row = rows.get((job_id, attempt, gpu.uuid))
    if row is None:
        row = JobGpuEnergy(
            job_id=job_id,
            attempt=attempt,
            gpu=gpu,
            gpu_uuid=gpu.uuid,
            start_mj=sample.energy_mj,
            end_mj=sample.energy_mj,
            samples=1,
            utilisation_sum=util,
            memory_sum=sample.memory_used_mib or 0.0,
            first_at=now,
            last_at=now,
            busy_at=now,
        )
        rows[job_id, attempt, gpu.uuid] = row
        new.append(row)
        return
    step, reset, _ = energy_step(row.end_mj, sample.energy_mj, (now - row.last_at).total_seconds())
    row.measured_mj += step
    row.resets += int(reset)
    row.end_mj = sample.energy_mj
    row.samples += 1
    row.utilisation_sum += util
    row.memory_sum += sample.memory_used_mib or 0.0
    row.last_at = now
    if util >= rules.idle_utilisation_pct:
        row.busy_at = now
    if row.pk:
        changed.append(row)


GPU_SAMPLE_FIELDS = [
    "health",
    "health_reason",
    "health_since",
    "clean_since",
    "hot_samples",
    "last_xid",
    "sampled_at",
    "temperature_c",
    "power_w",
    "utilisation_pct",
    "memory_used_mib",
    "energy_mj",
    "job",
]
ENERGY_FIELDS = [
    "end_mj",
    "measured_mj",
    "resets",
    "samples",
    "utilisation_sum",
    "memory_sum",
    "last_at",
    "busy_at",
]
NODE_FIELDS = [
    "scraped_at",
    "scrape_error",
    "scrape_errors",
    "health",
    "health_reason",
    "health_since",
    "clean_since",
]
CHUNK = 1000


def _save_gpus(rows: list[Gpu]) -> None:
    update_rows(Gpu, rows, GPU_SAMPLE_FIELDS)


def update_rows(model, rows: list, fields: list[str]) -> None:
    """Write `fields` of many rows. On PostgreSQL, the rows are copied (COPY) into a temporary
    table and written by one UPDATE … FROM it: Django's bulk_update writes a CASE per column per
    row, and its per-value field preparation and psycopg's array parameters cost more per cycle
    than the UPDATE itself. Values go as the model holds them (numbers, text, aware datetimes)."""
    if not rows:
        return
    if connection.vendor != "postgresql":
        model.objects.bulk_update(rows, fields, batch_size=200)
        return
    columns = [model._meta.get_field(name) for name in fields]
    attnames = [c.attname for c in columns]
    table = model._meta.db_table
    sets = ", ".join(f"{c.column} = v.{c.column}" for c in columns)
    with transaction.atomic(), connection.cursor() as cursor:
        temp = _copy_to_temp(
            cursor,
            table,
            ["id", *(c.column for c in columns)],
            ([row.pk, *(getattr(row, name) for name in attnames)] for row in rows),
        )
        cursor.execute(f"UPDATE {table} SET {sets} FROM {temp} AS v WHERE {table}.id = v.id")


def _copy_to_temp(cursor, table: str, columns: list[str], rows) -> str:
    """A temporary table of `table`'s `columns` (dropped at commit) holding `rows`, by COPY."""
    temp = f"_cycle_{table}"
    names = ", ".join(columns)
    cursor.execute(f"DROP TABLE IF EXISTS pg_temp.{temp}")
    cursor.execute(f"CREATE TEMP TABLE {temp} ON COMMIT DROP AS SELECT {names} FROM {table} WITH NO DATA")
    with cursor.cursor.copy(f"COPY {temp} ({names}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
    return temp


ROLLUP_COLUMNS = [
    "gpu_id",
    "minute",
    "temperature_sum",
    "power_sum",
    "utilisation_sum",
    "memory_sum",
    "energy_mj",
]


def add_energy_of_the_day(cluster: Cluster, now: datetime, mj: int) -> None:
    """Add what the cluster's GPUs used since their last samples to its energy of the (UTC) day;
    the first cycle of a day starts it afresh. One row update, atomic among concurrent shards."""
    day = now.astimezone(UTC).date()
    summed = Case(When(energy_day=day, then=F("energy_day_mj") + mj), default=Value(mj))
    if not ClusterTelemetry.objects.filter(cluster=cluster).update(energy_day_mj=summed, energy_day=day):
        ClusterTelemetry.objects.get_or_create(
            cluster=cluster, defaults={"energy_day": day, "energy_day_mj": mj}
        )


def _save_rollups(rollups: list[tuple]) -> None:
    if not rollups:
        return
    upsert = (
        "ON CONFLICT (gpu_id, minute) DO UPDATE SET "
        "samples = fleet_gpuminute.samples + 1, "
        "temperature_sum = fleet_gpuminute.temperature_sum + excluded.temperature_sum, "
        "power_sum = fleet_gpuminute.power_sum + excluded.power_sum, "
        "utilisation_sum = fleet_gpuminute.utilisation_sum + excluded.utilisation_sum, "
        "memory_sum = fleet_gpuminute.memory_sum + excluded.memory_sum, "
        "energy_mj = fleet_gpuminute.energy_mj + excluded.energy_mj"
    )
    names = ", ".join(ROLLUP_COLUMNS)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            with transaction.atomic():
                temp = _copy_to_temp(cursor, "fleet_gpuminute", ROLLUP_COLUMNS, rollups)
                cursor.execute(
                    f"INSERT INTO fleet_gpuminute ({names}, samples) SELECT {names}, 1 FROM {temp} {upsert}"
                )
            return
        for start in range(0, len(rollups), CHUNK):
            chunk = rollups[start : start + CHUNK]
            placeholders = ", ".join(["(%s, %s, %s, %s, %s, %s, %s, 1)"] * len(chunk))
            cursor.execute(
                f"INSERT INTO fleet_gpuminute ({names}, samples) VALUES {placeholders} {upsert}",
                [value for row in chunk for value in row],
            )


def _save_nodes(
    cluster: Cluster, ok: list[NodeResult], failed: list[NodeResult], now: datetime, rules: Rules
) -> list[HealthEvent]:
    """Store the nodes' exporter health; the events of those whose health moved."""
    silent_after = timedelta(seconds=rules.exporter_silent_seconds)
    changed = []
    before = {result.node.pk: result.node.health for result in [*ok, *failed]}
    for result in ok:
        node = result.node
        node.scraped_at, node.scrape_error, node.scrape_errors = now, "", 0
        next_health(node, Health.HEALTHY, "", now, rules)
        changed.append(node)
    for result in failed:
        node = result.node
        node.scrape_error, node.scrape_errors = result.error[:300], node.scrape_errors + 1
        silent_since = result.silent_since or node.scraped_at or node.created_at
        if now - silent_since >= silent_after:
            seconds = int((now - silent_since).total_seconds())
            next_health(
                node, Health.FAILED, f"GPU exporter silent for {seconds} s: {result.error}", now, rules
            )
        elif node.health == Health.HEALTHY:
            next_health(node, Health.WARNING, f"GPU exporter: {result.error}", now, rules)
        changed.append(node)
    update_rows(Node, changed, NODE_FIELDS)
    return [health_changed(cluster, node, now) for node in changed if node.health != before[node.pk]]
