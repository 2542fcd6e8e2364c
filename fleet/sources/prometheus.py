"""GPU telemetry from the site's Prometheus (or anything speaking the PromQL HTTP API) instead of
scraping each node: the portal keeps no samples of its own, it asks.

A cycle is four instant queries, however many GPUs and jobs the cluster has:
- who: `group by (UUID, gpu, modelName, node, instance, hpc_job, pod, namespace)` of the
  temperature every dcgm-exporter serves: one row per GPU, and per job on it (`hpc_job` copies
  series);
- values: `max by (__name__, UUID)` of temperature, power, utilisation, memory and the energy
  counter (the max folds the copies MIG instances print of device-level series);
- conditions: only the GPUs with an XID, a failed row remap or an uncorrectable ECC error;
- exporters: the targets Prometheus cannot scrape now, and those it could not all along the
  silence limit (`max_over_time(up[…]) == 0`).
They become the NodeResults the embedded scraper makes, and fleet.scrape.ingest stores and judges
them by the same rules (the same verdicts, drains, job ↔ GPU mapping and idle tracking), without
minute rollups: the node page's charts and the energy of the day ask Prometheus.

Energy of a job attempt: `increase()` of the energy counter over its run window, MIG copies folded
by UUID first. Jobs the exporter labels (`hpc_job` on Slurm, `pod`/`namespace` on Kubernetes) are
asked by label, up to a thousand a query, since their series exist only while they run; the
others by the GPUs the portal saw them on, one term per job with its own window (`@`), a couple
of hundred terms a query.

When Prometheus does not answer, answers too slowly, or answers nothing for the cluster, a cycle
changes nothing: no sample, no verdict, no drain. The cluster's telemetry is unavailable from the
first failure until the next answer, the pages say so, and energy falls back to the estimate.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
import urllib.parse
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime, timedelta

import pydantic
from django.core.cache import cache
from django.utils import timezone

from factory.adapters.connection import Connection
from factory.choices import ClusterKind
from factory.models import Cluster
from factory.sealing import SealBroken

from .. import metrics
from ..exposition import (
    ECC_DBE,
    ENERGY,
    GAUGES,
    ROW_REMAP_FAILURE,
    XID_COUNT,
    XID_LAST,
    Exposition,
    GpuSample,
)
from ..models import ClusterTelemetry, Node
from ..promql import PrometheusUnavailable, PromQL, any_of, duration, either, finite, selector, string
from ..rules import site_rules
from ..scrape import CycleReport, NodeResult, ingest

log = logging.getLogger(__name__)

LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
TEMPERATURE = "DCGM_FI_DEV_GPU_TEMP"
POWER = "DCGM_FI_DEV_POWER_USAGE"
UTILISATION = "DCGM_FI_DEV_GPU_UTIL"
# The labels a GPU is known by, and those that name the job on it.
GPU_LABELS = ("UUID", "uuid", "gpu", "modelName", "instance", "hostname", "Hostname")
JOB_LABELS = ("hpc_job", "pod", "namespace", "pod_name", "pod_namespace")
CONDITION = "factory_condition"
ATTEMPT = "factory_attempt"
K8S_JOB = "factory_k8s_job"
# A page waits at most this long for Prometheus; a cycle or metering, the source's own timeout.
PAGE_TIMEOUT = 3.0
PAGE_CACHE_SECONDS = 60
# Energy queries: jobs per query, and GPU-seconds per query (which bounds the samples Prometheus
# loads for one, far under its --query.max-samples at any usual scrape interval).
LABELLED_JOBS_PER_QUERY = 1000
JOB_TERMS_PER_QUERY = 200
GPU_SECONDS_PER_QUERY = 50_000_000


class PrometheusSettings(Connection):
    """A cluster's Prometheus source. `match`: label values that pick this cluster's GPU exporters
    out of everything the Prometheus scrapes (target labels, so that `up` has them too);
    `node_label`: the label that names the node (dcgm-exporter's `hostname`, or `Hostname` of its
    older releases, which is read too); the node is its `instance` where neither is set."""

    url: str  # e.g. https://prometheus.example.org or https://example.org/prometheus
    match: dict[str, str] = pydantic.Field(default_factory=dict)
    node_label: str = "hostname"
    bearer_token: str | None = pydantic.Field(default=None, repr=False)
    username: str | None = None
    password: str | None = pydantic.Field(default=None, repr=False)
    verify_tls: bool = True
    ca_file: str | None = None  # a CA bundle to verify Prometheus's certificate with
    client_cert_file: str | None = None  # mutual TLS
    client_key_file: str | None = None
    timeout: float = 5.0  # seconds for one query, connection and whole answer included

    @classmethod
    def secret_names(cls) -> frozenset[str]:
        """The settings that are credentials: those the schema never shows (as for clusters)."""
        return frozenset(name for name, info in cls.model_fields.items() if info.repr is False)

    @pydantic.field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("Prometheus setting 'url' must be an http:// or https:// URL.")
        if parts.username or parts.password or parts.query or parts.fragment:
            # Credentials go in bearer_token or username/password, which are never shown back.
            raise ValueError("Prometheus setting 'url' takes no credentials, query or fragment.")
        return url

    @pydantic.field_validator("match")
    @classmethod
    def _labels(cls, match: dict[str, str]) -> dict[str, str]:
        for name, value in match.items():
            if not LABEL_NAME.fullmatch(name) or name.startswith("__"):
                raise ValueError(f"Prometheus setting 'match': {name!r} is not a label name.")
            if not value or "\n" in value or "\r" in value:
                raise ValueError(f"Prometheus setting 'match': the value of {name!r} must be one line.")
        return match

    @pydantic.field_validator("node_label")
    @classmethod
    def _label_name(cls, name: str) -> str:
        if not LABEL_NAME.fullmatch(name):
            raise ValueError("Prometheus setting 'node_label' must be a label name.")
        return name

    @pydantic.field_validator("bearer_token", "username", "password")
    @classmethod
    def _one_line(cls, value: str | None, info: pydantic.ValidationInfo) -> str | None:
        if value is not None and (not value or "\n" in value or "\r" in value):
            raise ValueError(f"Prometheus setting {info.field_name!r} must be a non-empty single line.")
        return value

    @pydantic.field_validator("ca_file", "client_cert_file", "client_key_file")
    @classmethod
    def _absolute(cls, path: str | None, info: pydantic.ValidationInfo) -> str | None:
        if path is not None and not path.startswith("/"):
            raise ValueError(f"Prometheus setting {info.field_name!r} must be an absolute path.")
        return path

    @pydantic.field_validator("timeout")
    @classmethod
    def _timeout(cls, timeout: float) -> float:
        if not 0 < timeout <= 120:
            raise ValueError("Prometheus setting 'timeout' must be more than 0 and at most 120 seconds.")
        return timeout

    @pydantic.model_validator(mode="after")
    def _consistent(self) -> PrometheusSettings:
        if (self.username is None) != (self.password is None):
            raise ValueError("Prometheus settings 'username' and 'password' go together.")
        if self.bearer_token is not None and self.username is not None:
            raise ValueError("Give Prometheus a bearer token or a username and password, not both.")
        if self.client_key_file and not self.client_cert_file:
            raise ValueError("Prometheus setting 'client_key_file' needs 'client_cert_file'.")
        if self.ca_file and not self.verify_tls:
            raise ValueError("Prometheus setting 'ca_file' verifies TLS, which 'verify_tls' turns off.")
        return self

    def client(self, timeout: float | None = None) -> PromQL:
        verify: bool | str = self.ca_file or self.verify_tls
        cert = (
            (self.client_cert_file, self.client_key_file) if self.client_key_file else self.client_cert_file
        )
        return PromQL(
            self.url,
            timeout=min(timeout or self.timeout, self.timeout),
            bearer_token=self.bearer_token,
            basic_auth=(self.username, self.password) if self.username else None,
            verify=verify,
            cert=cert,
        )

    def select(self, metric: str = "", **regexes: str) -> str:
        return selector(metric, self.match, regexes)

    def node_of(self, labels: dict[str, str]) -> str:
        if self.node_label == "hostname":
            name = labels.get("hostname") or labels.get("Hostname")
        else:
            name = labels.get(self.node_label)
        return name or labels.get("instance", "")

    def identity_labels(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*GPU_LABELS, self.node_label, *JOB_LABELS)))


# --- a cycle ------------------------------------------------------------------------------------


@dataclasses.dataclass
class Reading:
    """What one cycle's queries said, by GPU UUID and by node."""

    gpus: dict[str, GpuSample] = dataclasses.field(default_factory=dict)
    node_of: dict[str, str] = dataclasses.field(default_factory=dict)  # UUID → node name
    instances: dict[str, str] = dataclasses.field(default_factory=dict)  # node name → instance
    series: dict[str, int] = dataclasses.field(default_factory=lambda: defaultdict(int))
    bad_values: dict[str, int] = dataclasses.field(default_factory=lambda: defaultdict(int))
    without_uuid: int = 0
    down: set[str] = dataclasses.field(default_factory=set)  # instances not scraped now
    down_throughout: set[str] = dataclasses.field(default_factory=set)  # …nor all along the limit


def _flag(expr: str, name: str) -> str:
    return f"label_replace({expr}, {string(CONDITION)}, {string(name)}, {string('')}, {string('')})"


def read(client: PromQL, settings: PrometheusSettings, silent_seconds: float) -> Reading:
    """The cluster's GPUs now, in four queries."""
    reading = Reading()
    up = settings.select("up")
    who, values, conditions, targets = client.query_all(
        [
            f"group by ({', '.join(settings.identity_labels())}) ({settings.select(TEMPERATURE)})",
            f"max by (__name__, UUID, uuid) ({settings.select(__name__=any_of([*GAUGES, ENERGY]))})",
            either(
                [
                    _flag(f"max by (UUID, uuid) ({settings.select(XID_LAST)}) > 0", "xid_last"),
                    _flag(f"max by (UUID, uuid, xid) ({settings.select(XID_COUNT)}) > 0", "xid_window"),
                    _flag(f"max by (UUID, uuid) ({settings.select(ROW_REMAP_FAILURE)}) >= 1", "row_remap"),
                    _flag(
                        f"max by (UUID, uuid) ({settings.select(__name__=any_of(ECC_DBE))}) > 0", "ecc_dbe"
                    ),
                ]
            ),
            either(
                [
                    _flag(f"{up} == 0", "down"),
                    _flag(f"max_over_time({up}[{duration(silent_seconds)}]) == 0", "down_throughout"),
                ]
            ),
        ],
        at=time.time(),  # the four see the same instant
    )
    _take_identities(reading, settings, who)
    _take_values(reading, values)
    _take_conditions(reading, conditions)
    for sample in targets:
        instance = sample.labels.get("instance", "")
        if sample.labels.get(CONDITION) == "down_throughout":
            reading.down_throughout.add(instance)
        else:
            reading.down.add(instance)
    return reading


def _uuid(labels: dict[str, str]) -> str:
    return labels.get("UUID") or labels.get("uuid") or ""


def _take_identities(reading: Reading, settings: PrometheusSettings, samples) -> None:
    jobs: dict[str, set[str]] = defaultdict(set)
    for sample in samples:
        labels = sample.labels
        uuid = _uuid(labels)
        name = settings.node_of(labels)[: Node._meta.get_field("name").max_length]
        if not uuid or not name:
            reading.without_uuid += 1
            continue
        reading.series[name] += 1
        gpu = reading.gpus.get(uuid)
        if gpu is None:
            try:
                index = int(labels.get("gpu", ""))
            except ValueError:
                reading.without_uuid += 1
                continue
            gpu = reading.gpus[uuid] = GpuSample(
                uuid=uuid,
                index=index,
                model_name=labels.get("modelName", ""),
                hostname=name,
                pod=labels.get("pod") or labels.get("pod_name", ""),
                namespace=labels.get("namespace") or labels.get("pod_namespace", ""),
            )
            reading.node_of[uuid] = name
            if labels.get("instance"):
                reading.instances.setdefault(name, labels["instance"])
        if labels.get("hpc_job"):
            jobs[uuid].add(labels["hpc_job"])
    for uuid, found in jobs.items():
        reading.gpus[uuid].hpc_jobs = frozenset(found)


def _take_values(reading: Reading, samples) -> None:
    for sample in samples:
        uuid = _uuid(sample.labels)
        gpu = reading.gpus.get(uuid)
        if gpu is None:
            continue
        node = reading.node_of[uuid]
        reading.series[node] += 1
        value, name = sample.value, sample.labels.get("__name__", "")
        if not finite(value) or value < 0:
            reading.bad_values[node] += 1
        elif name in GAUGES:
            setattr(gpu, GAUGES[name], float(value))
        elif name == ENERGY:
            gpu.energy_mj = int(value)


def _take_conditions(reading: Reading, samples) -> None:
    xids: dict[str, set[int]] = defaultdict(set)
    for sample in samples:
        uuid = _uuid(sample.labels)
        gpu = reading.gpus.get(uuid)
        if gpu is None or not finite(sample.value):
            continue
        condition = sample.labels.get(CONDITION)
        if condition == "xid_last":
            gpu.xid_last = int(sample.value)
        elif condition == "xid_window" and sample.labels.get("xid", "").isdigit():
            xids[uuid].add(int(sample.labels["xid"]))
        elif condition == "row_remap":
            gpu.row_remap_failure = True
        elif condition == "ecc_dbe":
            gpu.uncorrectable_ecc = max(gpu.uncorrectable_ecc, int(sample.value))
    for uuid, found in xids.items():
        reading.gpus[uuid].xids_in_window = frozenset(found)


def node_results(
    cluster: Cluster, reading: Reading, now: datetime, silent_seconds: float
) -> list[NodeResult]:
    """The reading as one NodeResult per node: its GPUs, or why its exporter is silent. Nodes are
    made the first time Prometheus shows one (named by `node_label`, typed by their GPUs' model)."""
    by_node: dict[str, dict[str, GpuSample]] = defaultdict(dict)
    for uuid, sample in reading.gpus.items():
        by_node[reading.node_of[uuid]][uuid] = sample
    nodes = _nodes(cluster, by_node, reading.instances)
    results = []
    for name, gpus in by_node.items():
        problems = []
        if reading.bad_values.get(name):
            problems.append(f"{reading.bad_values[name]} NaN, infinite or negative values")
        exposition = Exposition(gpus=gpus, problems=problems, series=reading.series.get(name, 0))
        results.append(NodeResult(nodes[name], exposition=exposition))
    if reading.without_uuid and results:
        results[0].exposition.problems.append(f"{reading.without_uuid} series without a UUID or gpu label")
    by_instance = {node.instance: node for node in nodes.values() if node.instance}
    for instance in sorted(reading.down | reading.down_throughout):
        node = by_instance.get(instance)
        if node is None or node.name in by_node:
            continue
        throughout = instance in reading.down_throughout
        results.append(
            NodeResult(
                node,
                error=f"Prometheus cannot scrape its exporter ({instance})",
                silent_since=now - timedelta(seconds=silent_seconds) if throughout else now,
            )
        )
    return results


def _nodes(cluster: Cluster, by_node: dict[str, dict], instances: dict[str, str]) -> dict[str, Node]:
    nodes = {n.name: n for n in Node.objects.filter(cluster=cluster).select_related("gpu_type")}
    new = [name for name in by_node if name not in nodes]
    if new:
        types = [pool.gpu_type for pool in cluster.pools.select_related("gpu_type")]
        Node.objects.bulk_create(
            [
                Node(
                    cluster=cluster,
                    name=name,
                    gpu_type=gpu_type_of(next(iter(by_node[name].values())).model_name, types),
                    exporter_url="",
                    instance=instances.get(name, "")[:300],
                )
                for name in new
            ],
            ignore_conflicts=True,
        )
        nodes = {n.name: n for n in Node.objects.filter(cluster=cluster).select_related("gpu_type")}
    moved = []
    for name, instance in instances.items():
        node = nodes.get(name)
        if node is not None and node.instance != instance[:300]:
            node.instance = instance[:300]
            moved.append(node)
    if moved:
        Node.objects.bulk_update(moved, ["instance"], batch_size=500)
    return nodes


def gpu_type_of(model_name: str, types: list):
    """The cluster's GPU type whose slug the exporter's model name contains ("NVIDIA H100 80GB
    HBM3" → h100); the only one, for a cluster of one type."""
    if len(types) == 1:
        return types[0]
    squeezed = re.sub(r"[^a-z0-9]", "", model_name.lower())
    for gpu_type in sorted(types, key=lambda t: -len(t.slug)):
        if re.sub(r"[^a-z0-9]", "", gpu_type.slug.lower()) in squeezed:
            return gpu_type
    return None


def cycle(cluster: Cluster, telemetry: ClusterTelemetry, *, now: datetime | None = None) -> CycleReport:
    """One telemetry cycle of a cluster read from Prometheus; nothing at all changes when it does
    not answer, except that the cluster's telemetry is marked unavailable."""
    from .. import health

    report = CycleReport(cluster.slug)
    now = now or timezone.now()
    rules = site_rules()
    started = time.perf_counter()
    client = None
    try:
        settings = telemetry.prometheus_settings()
        client = settings.client()
        reading = read(client, settings, rules.exporter_silent_seconds)
        if not reading.gpus and not reading.down:
            raise PrometheusUnavailable(f"no GPU exporter series match {settings.select() or 'the query'}")
    except (PrometheusUnavailable, ValueError, SealBroken) as exc:
        where = f"Prometheus at {telemetry.prometheus.get('url', '?')}"
        report.unavailable = f"{where}: {_why(exc)}"
        report.queries = client.queries if client else 0
        report.fetch_seconds = time.perf_counter() - started
        log.warning("GPU telemetry of %s unavailable: %s", cluster, report.unavailable)
        metrics.scrape_error(cluster.slug, _why(exc))
        telemetry.mark_unavailable(report.unavailable, now)
        _finish(telemetry, now, report)
        return report
    finally:
        if client is not None:
            client.close()
    report.queries = client.queries
    report.fetch_seconds = time.perf_counter() - started
    started = time.perf_counter()
    results = node_results(cluster, reading, now, rules.exporter_silent_seconds)
    ingest(cluster, results, now, report, keep_rollups=False)
    report.store_seconds = time.perf_counter() - started
    started = time.perf_counter()
    health.act(cluster, now)
    report.health_seconds = time.perf_counter() - started
    telemetry.mark_available()
    _finish(telemetry, now, report)
    return report


def _why(exc: Exception) -> str:
    if isinstance(exc, SealBroken):
        return "its credentials cannot be unsealed with FACTORY_SECRET_KEYS"
    if isinstance(exc, ValueError) and not isinstance(exc, PrometheusUnavailable):
        return f"settings: {exc}"
    return str(exc)


def _finish(telemetry: ClusterTelemetry, now: datetime, report: CycleReport) -> None:
    ClusterTelemetry.objects.filter(pk=telemetry.pk).update(scraped_at=now, cycle_seconds=report.seconds)
    metrics.observe_cycle(report)


# --- energy of job attempts ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AttemptWindow:
    """A job attempt as energy queries need it: its run window, what the exporter labels it by
    (its backend id on Slurm, namespace/name on Kubernetes) and the GPUs the portal saw it on."""

    key: tuple[int, int]
    start: datetime
    end: datetime
    kind: str = ""
    external_id: str = ""
    uuids: tuple[str, ...] = ()
    gpus: int = 1

    @property
    def gpu_seconds(self) -> float:
        return max(1.0, (self.end - self.start).total_seconds()) * max(1, self.gpus, len(self.uuids))


def energy_mj(telemetry: ClusterTelemetry, attempts: list[AttemptWindow]) -> dict[tuple[int, int], float]:
    """mJ each attempt's GPUs used in its window; attempts Prometheus has no series of are left
    out (their energy is estimated). Raises PrometheusUnavailable."""
    settings = _settings(telemetry)
    client = settings.client()
    try:
        found: dict[tuple[int, int], float] = {}
        runnable = [a for a in attempts if a.end > a.start]
        slurm = [a for a in runnable if a.kind == ClusterKind.SLURM and a.external_id]
        pods = [a for a in runnable if a.kind == ClusterKind.KUBERNETES and "/" in a.external_id]
        found.update(_by_hpc_job(client, settings, slurm))
        found.update(_by_pod(client, settings, pods))
        found.update(_by_gpus(client, settings, [a for a in runnable if a.key not in found and a.uuids]))
        return found
    finally:
        client.close()


def _settings(telemetry: ClusterTelemetry) -> PrometheusSettings:
    try:
        return telemetry.prometheus_settings()
    except (ValueError, SealBroken) as exc:
        raise PrometheusUnavailable(_why(exc)) from None


def _chunks(attempts: list[AttemptWindow], size: int) -> Iterator[list[AttemptWindow]]:
    """Attempts in end order, at most `size` and GPU_SECONDS_PER_QUERY a chunk."""
    chunk: list[AttemptWindow] = []
    load = 0.0
    for attempt in sorted(attempts, key=lambda a: (a.end, a.start)):
        if chunk and (len(chunk) >= size or load + attempt.gpu_seconds > GPU_SECONDS_PER_QUERY):
            yield chunk
            chunk, load = [], 0.0
        chunk.append(attempt)
        load += attempt.gpu_seconds
    if chunk:
        yield chunk


def _span(chunk: list[AttemptWindow]) -> tuple[str, str]:
    """The range and evaluation time covering every window of the chunk."""
    end = max(a.end for a in chunk)
    start = min(a.start for a in chunk)
    return duration((end - start).total_seconds()), f"{end.timestamp():.3f}"


def _by_hpc_job(client: PromQL, settings: PrometheusSettings, attempts: list[AttemptWindow]) -> dict:
    """Slurm jobs by dcgm-exporter's `hpc_job` label: a job's series exist only while the job-mapping
    files name it, so one range covering a chunk's windows counts each job's own run alone."""
    found = {}
    chunks, exprs = [], []
    for chunk in _chunks(attempts, LABELLED_JOBS_PER_QUERY):
        by_id = defaultdict(list)
        for attempt in chunk:
            by_id[attempt.external_id].append(attempt.key)
        span, at = _span(chunk)
        counter = settings.select(ENERGY, hpc_job=any_of(by_id))
        chunks.append(by_id)
        exprs.append(f"sum by (hpc_job) (max by (UUID, uuid, hpc_job) (increase({counter}[{span}] @ {at})))")
    for by_id, samples in zip(chunks, client.query_all(exprs), strict=True):
        for sample in samples:
            if finite(sample.value):
                for key in by_id.get(sample.labels.get("hpc_job", ""), ()):
                    found[key] = sample.value
    return found


def _by_pod(client: PromQL, settings: PrometheusSettings, attempts: list[AttemptWindow]) -> dict:
    """Kubernetes jobs by their pods' `namespace` and `pod` labels (a Job's pods are named
    <job>-<suffix>), counted as for `hpc_job`."""
    found = {}
    chunks, exprs = [], []
    for chunk in _chunks(attempts, LABELLED_JOBS_PER_QUERY):
        by_id = defaultdict(list)
        for attempt in chunk:
            by_id[attempt.external_id].append(attempt.key)
        namespaces = {external_id.split("/", 1)[0] for external_id in by_id}
        names = {external_id.split("/", 1)[1] for external_id in by_id}
        span, at = _span(chunk)
        counter = settings.select(ENERGY, namespace=any_of(namespaces), pod=f"(?:{any_of(names)})-[^-]+")
        job_of_pod = f"label_replace(increase({counter}[{span}] @ {at}), {string(K8S_JOB)}, {string('$1')}, {string('pod')}, {string('(.+)-[^-]+')})"  # noqa: E501
        chunks.append(by_id)
        exprs.append(
            f"sum by (namespace, {K8S_JOB}) (max by (UUID, uuid, namespace, {K8S_JOB}) ({job_of_pod}))"
        )
    for by_id, samples in zip(chunks, client.query_all(exprs), strict=True):
        for sample in samples:
            external_id = f"{sample.labels.get('namespace', '')}/{sample.labels.get(K8S_JOB, '')}"
            if finite(sample.value):
                for key in by_id.get(external_id, ()):
                    found[key] = sample.value
    return found


def _by_gpus(client: PromQL, settings: PrometheusSettings, attempts: list[AttemptWindow]) -> dict:
    """Jobs by the GPUs the portal saw them on: one term per job, over its own window."""
    found = {}
    exprs = []
    for chunk in _chunks(attempts, JOB_TERMS_PER_QUERY):
        terms = []
        for attempt in chunk:
            counter = settings.select(ENERGY, UUID=any_of(attempt.uuids))
            window = duration((attempt.end - attempt.start).total_seconds())
            used = f"sum(max by (UUID, uuid) (increase({counter}[{window}] @ {attempt.end.timestamp():.3f})))"
            name = f"{attempt.key[0]}.{attempt.key[1]}"
            terms.append(
                f"label_replace({used}, {string(ATTEMPT)}, {string(name)}, {string('')}, {string('')})"
            )
        exprs.append(either(terms))
    for samples in client.query_all(exprs):
        for sample in samples:
            job, _, attempt = sample.labels.get(ATTEMPT, "").partition(".")
            if finite(sample.value) and job.isdigit() and attempt.isdigit():
                found[int(job), int(attempt)] = sample.value
    return found


# --- what pages ask -----------------------------------------------------------------------------


def energy_today_kwh(
    cluster: Cluster, telemetry: ClusterTelemetry, now: datetime | None = None
) -> float | None:
    """The cluster's GPU energy since midnight UTC (None when Prometheus cannot say), asked at most
    once a minute per cluster."""
    if telemetry.unavailable_since is not None:
        return None
    key = f"fleet:prometheus:energy-today:{cluster.pk}"
    found = cache.get(key)
    if found is not None:
        return found
    now = now or timezone.now()
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    try:
        settings = _settings(telemetry)
        client = settings.client(PAGE_TIMEOUT)
        try:
            counter = settings.select(ENERGY)
            window = duration(max(1.0, (now - midnight).total_seconds()))
            samples = client.query(f"sum(max by (UUID, uuid) (increase({counter}[{window}])))", at=now)
        finally:
            client.close()
    except PrometheusUnavailable as exc:
        log.info("energy of today for %s: %s", cluster, exc)
        return None
    found = samples[0].value / 3.6e9 if samples and finite(samples[0].value) else 0.0
    cache.set(key, found, PAGE_CACHE_SECONDS)
    return found


def node_series(
    telemetry: ClusterTelemetry, node: Node, since: datetime, until: datetime, step: float = 60.0
) -> dict[str, dict[str, list[tuple[float, float]]]] | None:
    """A node's temperature, power and utilisation per GPU over [since, until], averaged per step
    by Prometheus (as the embedded scraper's minute rollups are); None when it cannot say."""
    if telemetry.unavailable_since is not None or not node.instance:
        return None
    series: dict[str, dict[str, list[tuple[float, float]]]] = {}
    try:
        settings = _settings(telemetry)
        client = settings.client(PAGE_TIMEOUT)
        try:
            for name, metric in (
                ("temperature", TEMPERATURE),
                ("power", POWER),
                ("utilisation", UTILISATION),
            ):
                gauge = selector(metric, {**settings.match, "instance": node.instance})
                expr = f"max by (gpu) (avg_over_time({gauge}[{duration(step)}]))"
                found = client.query_range(expr, since, until, step)
                series[name] = {
                    f"GPU {s.labels.get('gpu', '?')}": [(t, v) for t, v in s.points if finite(v)]
                    for s in found
                }
        finally:
            client.close()
    except PrometheusUnavailable as exc:
        log.info("charts of %s: %s", node, exc)
        return None
    return series


__all__ = [
    "AttemptWindow",
    "PrometheusSettings",
    "cycle",
    "energy_mj",
    "energy_today_kwh",
    "node_series",
    "read",
]
