"""What the portal does about failed hardware: drain it in its backend with a reason of its own
("factory: …"), tell the platform admins, treat the job that was on it as the platform's fault
(not billed, requeued once); and resume what it drained itself once the hardware has been healthy
for `resume_after_seconds`. A drain or resume the backend refuses is tried again next cycle.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.db.models import Q
from django.urls import reverse
from django.utils import timezone

from factory.adapters import DRAIN_REASON_PREFIX, BackendError, DrainTarget
from factory.models import Cluster
from jobs import lifecycle
from jobs.models import Job
from jobs.notifications import notify_platform_admins

from . import metrics
from .choices import Health
from .models import Gpu, HealthEvent, HealthEventKind, JobGpuEnergy, Node

log = logging.getLogger(__name__)

# A job last seen on a GPU this long before it failed was on it when it failed.
FAULT_WINDOW = timedelta(minutes=5)


def act(cluster: Cluster, now: datetime | None = None, *, nodes: list[Node] | None = None) -> dict[str, int]:
    """Drain what failed and is not drained yet; resume what the portal drained and is healthy
    again; on the whole cluster, or on `nodes` only (a shard of its cycle). Returns counts, for
    the caller's log."""
    now = now or timezone.now()
    done = {"drained": 0, "resumed": 0}
    gpus = Gpu.objects.filter(cluster=cluster)
    cluster_nodes = Node.objects.filter(cluster=cluster)
    if nodes is not None:
        gpus = gpus.filter(node__in=nodes)
        cluster_nodes = cluster_nodes.filter(pk__in=[node.pk for node in nodes])
    to_drain = gpus.filter(health=Health.FAILED, drained_by_portal=False)
    to_resume = gpus.filter(drained_by_portal=True).exclude(health=Health.FAILED)
    nodes_to_drain = cluster_nodes.filter(health=Health.FAILED, drained_by_portal=False)
    nodes_to_resume = cluster_nodes.filter(drained_by_portal=True).exclude(health=Health.FAILED)
    if not (to_drain.exists() or to_resume.exists() or nodes_to_drain.exists() or nodes_to_resume.exists()):
        return done
    adapter = cluster.adapter()
    for gpu in to_drain.select_related("node", "gpu_type"):
        done["drained"] += drain_gpu(adapter, gpu, now)
    for node in nodes_to_drain.select_related("gpu_type"):
        done["drained"] += drain_node(adapter, node, now)
    for gpu in to_resume.select_related("node", "gpu_type"):
        done["resumed"] += resume_gpu(adapter, gpu, now)
    for node in nodes_to_resume.select_related("gpu_type"):
        done["resumed"] += resume_node(adapter, node, now)
    return done


def _slug(gpu_type) -> str:
    return gpu_type.slug if gpu_type else ""


def drain_gpu(adapter, gpu: Gpu, now: datetime) -> bool:
    node = gpu.node
    reason = f"{DRAIN_REASON_PREFIX} {gpu.health_reason}"[:300]
    target = DrainTarget(node.name, _slug(gpu.gpu_type or node.gpu_type), (gpu.index,))
    if not (adapter.drains_whole_node and node.drained_by_portal):
        try:
            adapter.drain(target, reason)
        except BackendError as exc:
            log.warning("could not drain %s: %s", gpu, exc)
            return False
    Gpu.objects.filter(pk=gpu.pk).update(drained_by_portal=True, drain_reason=reason, drained_at=now)
    recorded(gpu, HealthEventKind.DRAINED, now, reason)
    if adapter.drains_whole_node and not node.drained_by_portal:
        Node.objects.filter(pk=node.pk).update(drained_by_portal=True, drain_reason=reason, drained_at=now)
    metrics.DRAINS.labels(gpu.cluster.slug if hasattr(gpu, "cluster") else "").inc()
    what = f"node {node.name}" if adapter.drains_whole_node else f"GPU {gpu.index} of {node.name}"
    _tell_admins(
        f"gpu-drain:{gpu.pk}:{int(now.timestamp())}",
        f"{node.cluster.slug}: {what} drained",
        f"{gpu.health_reason}. The portal drained {what} on {node.cluster.slug} "
        f'(reason "{reason}") and will resume it once it has been healthy for a while.',
        node,
    )
    blame_platform(gpu.uuid, gpu.health_reason, node, now, current_job=gpu.job_id)
    return True


def drain_node(adapter, node: Node, now: datetime) -> bool:
    reason = f"{DRAIN_REASON_PREFIX} {node.health_reason}"[:300]
    indexes = tuple(node.gpus.values_list("index", flat=True))
    try:
        adapter.drain(DrainTarget(node.name, _slug(node.gpu_type), indexes), reason)
    except BackendError as exc:
        log.warning("could not drain %s: %s", node, exc)
        return False
    Node.objects.filter(pk=node.pk).update(drained_by_portal=True, drain_reason=reason, drained_at=now)
    recorded(node, HealthEventKind.DRAINED, now, reason)
    metrics.DRAINS.labels(node.cluster.slug).inc()
    _tell_admins(
        f"node-drain:{node.pk}:{int(now.timestamp())}",
        f"{node.cluster.slug}: node {node.name} drained",
        f'{node.health_reason}. The portal drained node {node.name} (reason "{reason}").',
        node,
    )
    for gpu in node.gpus.all():
        blame_platform(gpu.uuid, node.health_reason, node, now, current_job=gpu.job_id)
    return True


def resume_gpu(adapter, gpu: Gpu, now: datetime) -> bool:
    node = gpu.node
    if adapter.drains_whole_node:
        # The node comes back when nothing on it is failed any more.
        failed = node.gpus.filter(health=Health.FAILED).exclude(pk=gpu.pk).exists()
        if (
            not failed
            and node.health != Health.FAILED
            and node.drained_by_portal
            and not _resume(adapter, node, ())
        ):
            return False
        Gpu.objects.filter(pk=gpu.pk).update(drained_by_portal=False, drain_reason="", drained_at=None)
        recorded(gpu, HealthEventKind.RESUMED, now)
        if not failed and node.health != Health.FAILED:
            Node.objects.filter(pk=node.pk).update(drained_by_portal=False, drain_reason="", drained_at=None)
        return True
    if not _resume(adapter, node, (gpu.index,)):
        return False
    Gpu.objects.filter(pk=gpu.pk).update(drained_by_portal=False, drain_reason="", drained_at=None)
    recorded(gpu, HealthEventKind.RESUMED, now)
    _tell_admins(
        f"gpu-resume:{gpu.pk}:{int(now.timestamp())}",
        f"{node.cluster.slug}: GPU {gpu.index} of {node.name} back in service",
        f"GPU {gpu.index} of {node.name} has been healthy long enough; the portal resumed it.",
        node,
    )
    return True


def resume_node(adapter, node: Node, now: datetime) -> bool:
    if node.gpus.filter(health=Health.FAILED).exists():
        return False
    indexes = tuple(node.gpus.values_list("index", flat=True))
    if not _resume(adapter, node, indexes):
        return False
    Node.objects.filter(pk=node.pk).update(drained_by_portal=False, drain_reason="", drained_at=None)
    Gpu.objects.filter(node=node, drained_by_portal=True).exclude(health=Health.FAILED).update(
        drained_by_portal=False, drain_reason="", drained_at=None
    )
    recorded(node, HealthEventKind.RESUMED, now)
    _tell_admins(
        f"node-resume:{node.pk}:{int(now.timestamp())}",
        f"{node.cluster.slug}: node {node.name} back in service",
        f"Node {node.name} has been healthy long enough; the portal resumed it.",
        node,
    )
    return True


def _resume(adapter, node: Node, indexes: tuple[int, ...]) -> bool:
    try:
        resumed = adapter.resume(DrainTarget(node.name, _slug(node.gpu_type), indexes))
    except BackendError as exc:
        log.warning("could not resume %s: %s", node, exc)
        return False
    if not resumed:
        log.info("%s was drained by someone else meanwhile: left as it is", node)
    return resumed


def recorded(thing: Gpu | Node, kind: str, now: datetime, reason: str = "") -> None:
    """Keep the drain or resume in the hardware's history (HealthEvent)."""
    HealthEvent.of(thing.cluster_id, thing, kind, now, reason=reason).save()


def _tell_admins(source: str, subject: str, text: str, node: Node) -> None:
    url = reverse("fleet:node", args=[node.cluster.slug, node.name])
    notify_platform_admins(source, subject, text, url=url)


def blame_platform(gpu_uuid: str, reason: str, node: Node, now: datetime, *, current_job: int | None) -> None:
    """The job on the failed GPU (running, or failed within FAULT_WINDOW) ends up the platform's
    fault: not billed, and requeued once."""
    recent = JobGpuEnergy.objects.filter(gpu_uuid=gpu_uuid, last_at__gte=now - FAULT_WINDOW)
    job_ids = set(recent.values_list("job_id", flat=True))
    if current_job:
        job_ids.add(current_job)
    said = f"{reason} on node {node.name}"
    for job in Job.objects.filter(pk__in=job_ids).filter(Q(cluster=node.cluster) | Q(cluster__isnull=True)):
        attempts = set(recent.filter(job=job).values_list("attempt", flat=True))
        if attempts and job.attempt not in attempts:
            continue  # that attempt is over; the job has moved on
        if lifecycle.requeue_after_hardware_fault(job, said):
            log.info("job %s was on failed hardware: %s", job.pk, said)
