"""The `kubernetes` backend: every portal job is a batch/v1 Job, through the official client.

- submit: a Job named `aif-<dispatch key>` in the tenant's namespace (created on first use). A
  retried dispatch gets 409 AlreadyExists for the same name, which means the Job is there: success.
- statuses: one list of the portal's Jobs across namespaces per sync (by a portal-wide label),
  plus, only when some Jobs failed, one list of their pods for the exit codes.
- Terminal states come from `Complete=True` / `Failed=True` alone. Recent API servers first write
  `SuccessCriteriaMet` / `FailureTarget` while the pods still terminate: the outcome is decided but
  the GPUs are not free yet, so such a Job is still reported running (quota is released only when
  the GPUs are). Older servers write Complete/Failed directly, which needs no special case.
- cancel: delete with propagationPolicy=Background (batch/v1 defaults to orphaning the pods).
- logs: the pod's log. The API has no offset, so each read fetches the log from its start up to
  offset + one chunk (`limitBytes`) and slices it: a reader pays for the bytes before its offset,
  never for more than one chunk after it.
- Kueue (connection `kueue_queue`): Jobs are created suspended with the queue-name label. Kueue
  resumes them on admission and suspends them again on preemption; suspended reads as queued.
- Topology (connection `topology_labels`: the node labels of the site's topology levels, broadest
  first, as in its Kueue Topology): health groups each pool's nodes by the domain of the last level
  (a block, a rack), which admission keeps a gang within where one has room. A gang's Job asks for
  the same: with Kueue, through its topology-aware scheduling (the pod template's
  `kueue.x-k8s.io/podset-preferred-topology`, or `-required-topology` with `topology_required`);
  without, through a preferred node affinity for the domain admission chose.
- Every pod meets the `restricted` Pod Security profile: non-root (a fixed UID, so images built
  to run as root still start), no privilege escalation, no capabilities, the runtime's default
  seccomp profile, and no service account token. Images come only from the cluster's allow-list
  (`allowed_images`, or `allow_any_image: true`), checked again here and sent fully qualified.
- Tenant namespaces enforce that profile (Pod Security labels), take traffic only from
  themselves (a NetworkPolicy: egress to the namespace itself, to DNS in kube-system and to
  public addresses), and hold the tenant's GPU ceiling as a ResourceQuota on
  `requests.nvidia.com/gpu` (apply_tenant_limits, as Slurm's GrpTRES), so that a Job made
  without the portal, e.g. with kubectl and the tenant's own credentials, gets no further.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import dataclasses
import hashlib
import ipaddress
import json
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from functools import cached_property
from typing import Any, TypeVar

import pydantic
import urllib3
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from kubernetes.utils import parse_quantity

from .base import (
    DRAIN_REASON_PREFIX,
    LOG_CHUNK_BYTES,
    Adapter,
    BackendError,
    BackendState,
    BackendUnavailable,
    DrainTarget,
    GpuLimit,
    Health,
    ImageRule,
    JobRejected,
    LogChunk,
    PoolHealth,
    StatusReport,
    dispatch_key,
    job_env,
    job_secrets,
    log_chunk,
    normalise_image,
    valid_image_prefix,
)
from .connection import Connection

log = logging.getLogger(__name__)

T = TypeVar("T")

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "aifactory"
SELECTOR = f"{MANAGED_BY}={MANAGER}"  # every Job and pod the portal made, in every namespace
LABEL_UID = "aifactory.io/job-uid"
LABEL_KEY = "aifactory.io/dispatch-key"  # the attempt: a requeued job's pods are not its old ones
LABEL_TENANT = "aifactory.io/tenant"
LABEL_GPU_TYPE = "aifactory.io/gpu-type"
ANNOTATION_NAME = "aifactory.io/job-name"  # portal names may be longer than a label value allows
# A gang's pods: the Job controller sets the index on each pod (annotation and label).
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
GANG_PORT = 29500  # torchrun's default rendezvous port
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
# Kueue's topology-aware scheduling: on a pod template, the node label of the topology level whose
# domain all the pod set's pods must share (required) or should (preferred, else the level above).
KUEUE_REQUIRED_TOPOLOGY = "kueue.x-k8s.io/podset-required-topology"
KUEUE_PREFERRED_TOPOLOGY = "kueue.x-k8s.io/podset-preferred-topology"
# A label key: an optional DNS subdomain prefix and "/", then a name of up to 63 characters.
LABEL_NAME = re.compile(
    r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
GPU_RESOURCE = "nvidia.com/gpu"
GPU_QUOTA = f"requests.{GPU_RESOURCE}"  # quotas on extended resources count requests only
CONTAINER = "job"
JOB_NAME_PREFIX = "aif-"

# What the portal keeps in each tenant namespace, by name: its own, replaced when it differs.
QUOTA_NAME = "aifactory-gpus"
POLICY_NAME = "aifactory-tenant-isolation"
POD_SECURITY_LEVEL = "restricted"
NAMESPACE_SECURITY_LABELS = {
    f"pod-security.kubernetes.io/{mode}{suffix}": value
    for mode in ("enforce", "audit", "warn")
    for suffix, value in (("", POD_SECURITY_LEVEL), ("-version", "latest"))
}
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"  # set by the API server on every namespace
# The restricted profile's container settings (the pod's say non-root and seccomp too).
CONTAINER_SECURITY_CONTEXT = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "privileged": False,
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}
# Where "public egress" does not reach: private networks (pods, services, nodes and the API
# server live there), carrier-grade NAT (some pod networks) and link-local addresses (cloud
# metadata endpoints, which hand out the node's credentials).
PRIVATE_IPV4 = ("10.0.0.0/8", "100.64.0.0/10", "169.254.0.0/16", "172.16.0.0/12", "192.168.0.0/16")
PRIVATE_IPV6 = ("fc00::/7", "fe80::/10")
MAX_ID = 2**31 - 1

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
# Where a cordon the portal made keeps its reason; resume() uncordons only nodes that carry one.
DRAIN_ANNOTATION = "factory.aifactory.dev/drain-reason"
NAMESPACE_PREFIX = re.compile(r"^([a-z0-9][-a-z0-9]{0,29})?$")
RESERVED_NAMESPACES = frozenset({"default", "kube-system", "kube-public", "kube-node-lease"})
# What the create calls judge themselves: the request's fault, so the job is refused.
CLIENT_ERRORS = frozenset(range(400, 500)) - {401, 403, 429}

# Why the job controller failed a Job, in words; BackoffLimitExceeded needs none (the pod failed:
# its exit code says how).
FAILURE_REASONS = {
    "BackoffLimitExceeded": "",
    "PodFailurePolicy": "stopped by the Job's pod failure policy",
    "MaxFailedIndexesExceeded": "too many of its indexes failed",
    "FailedIndexes": "some of its indexes failed",
}
# Why a pod ended, where its exit code alone does not say it.
POD_REASONS = {
    "OOMKilled": "out of memory",
    "Evicted": "its pod was evicted from the node",
    "DeadlineExceeded": "its pod ran past its deadline",
    "NodeLost": "its node was lost",
}
# Pod-level reasons for an end the job did not cause: not billed.
PLATFORM_POD_REASONS = frozenset({"Evicted", "NodeLost", "Shutdown", "NodeShutdown", "Terminated"})
KUEUE_WAITING = "waiting in the cluster's Kueue queue"
KUEUE_PREEMPTED = "preempted by Kueue; waiting in the cluster's Kueue queue"
SUSPENDED = "suspended on the cluster"
POD_WAITING = "waiting for its pod to start (scheduling, image pull)"
GONE = "the Job is gone from the cluster (deleted, or removed after its ttlSecondsAfterFinished)"


class KubernetesConnection(Connection):
    # The kubeconfig YAML itself; write-only, never shown back.
    kubeconfig: str | None = pydantic.Field(default=None, repr=False)
    context: str | None = None  # a context of that kubeconfig; its current-context by default
    in_cluster: bool = False  # use the service account of the pod the portal runs in
    namespace_prefix: str = "aif-"  # a tenant's namespace is this prefix + the tenant's slug
    ttl_seconds_after_finished: int = 3600  # finished Jobs (and their logs) stay this long
    kueue_queue: str | None = None  # a Kueue LocalQueue: Jobs are created suspended in it
    verify_ssl: bool = True  # False skips TLS verification of the API server (test clusters only)
    request_timeout: float = 30.0  # seconds per API request
    # Registry prefixes jobs' images must be under ("nvcr.io/nvidia/"). Empty: no image runs,
    # unless allow_any_image says, explicitly, that any may.
    allowed_images: list[str] = []
    allow_any_image: bool = False
    run_as_user: int = 1000  # the UID and GID every job's container runs as: never root
    run_as_group: int = 1000
    public_egress: bool = True  # jobs may reach public addresses (not private or link-local ones)
    egress_cidrs: list[str] = []  # further destinations jobs may reach, e.g. on-premises storage
    # The node labels naming a node's place in the site's topology, broadest level first, down to
    # the level whose domain a gang's nodes should share: as the levels of the site's Kueue
    # Topology, e.g. ["cloud.google.com/gce-topology-block"] or [block label, rack label].
    # Empty: no topology. A domain is named by its labels' values down to that level.
    topology_labels: list[str] = []
    # With Kueue: a gang starts only within one domain (podset-required-topology), instead of
    # preferably within one (podset-preferred-topology).
    topology_required: bool = False

    @pydantic.field_validator("namespace_prefix")
    @classmethod
    def _namespace_prefix(cls, prefix: str) -> str:
        if not NAMESPACE_PREFIX.fullmatch(prefix):
            raise ValueError(
                "Connection setting 'namespace_prefix' may use up to 30 lowercase letters, digits and "
                "hyphens, starting with a letter or digit."
            )
        return prefix

    @pydantic.field_validator("ttl_seconds_after_finished")
    @classmethod
    def _not_negative(cls, ttl: int) -> int:
        if ttl < 0:
            raise ValueError("Connection setting 'ttl_seconds_after_finished' must be 0 or more seconds.")
        return ttl

    @pydantic.field_validator("kueue_queue")
    @classmethod
    def _local_queue(cls, queue: str | None) -> str | None:
        if queue is not None and not DNS_LABEL.fullmatch(queue):
            raise ValueError("Connection setting 'kueue_queue' must be a Kueue LocalQueue name.")
        return queue

    @pydantic.field_validator("request_timeout")
    @classmethod
    def _positive(cls, timeout: float) -> float:
        if timeout <= 0:
            raise ValueError("Connection setting 'request_timeout' must be positive.")
        return timeout

    @pydantic.field_validator("allowed_images")
    @classmethod
    def _image_prefixes(cls, prefixes: list[str]) -> list[str]:
        for number, prefix in enumerate(prefixes, start=1):
            if not valid_image_prefix(prefix):
                raise ValueError(
                    f"Entry {number} of connection setting 'allowed_images' is not a registry prefix: "
                    "write a registry and optionally a path, such as 'nvcr.io/nvidia/' or "
                    "'docker.io/library/busybox'."
                )
        return prefixes

    @pydantic.field_validator("run_as_user", "run_as_group")
    @classmethod
    def _not_root(cls, value: int, info: pydantic.ValidationInfo) -> int:
        if not 1 <= value <= MAX_ID:
            raise ValueError(f"Connection setting {info.field_name!r} must be from 1 to {MAX_ID} (not root).")
        return value

    @pydantic.field_validator("egress_cidrs")
    @classmethod
    def _networks(cls, cidrs: list[str]) -> list[str]:
        for number, cidr in enumerate(cidrs, start=1):
            try:
                ipaddress.ip_network(cidr)
            except ValueError:
                raise ValueError(
                    f"Entry {number} of connection setting 'egress_cidrs' is not a network such as "
                    "'10.20.0.0/16' (no host bits set)."
                ) from None
        return cidrs

    @pydantic.field_validator("topology_labels")
    @classmethod
    def _label_names(cls, labels: list[str]) -> list[str]:
        for number, label in enumerate(labels, start=1):
            if not LABEL_NAME.fullmatch(label):
                raise ValueError(
                    f"Entry {number} of connection setting 'topology_labels' is not a node label name "
                    "such as 'cloud.google.com/gce-topology-block'."
                )
        if len(set(labels)) != len(labels):
            raise ValueError("Connection setting 'topology_labels' names a label twice.")
        return labels

    @pydantic.model_validator(mode="after")
    def _one_way_in(self) -> KubernetesConnection:
        if bool(self.kubeconfig) == self.in_cluster:
            raise ValueError("Give either 'kubeconfig' (the YAML text) or 'in_cluster': true.")
        if self.topology_required and not (self.kueue_queue and self.topology_labels):
            raise ValueError(
                "'topology_required' needs 'kueue_queue' and 'topology_labels': only Kueue starts a "
                "gang's pods all within one domain."
            )
        if self.allow_any_image and self.allowed_images:
            raise ValueError("Give either 'allowed_images' or 'allow_any_image': true, not both.")
        if self.kubeconfig:
            self.config_dict()
        elif self.context:
            raise ValueError("'context' needs a 'kubeconfig'.")
        return self

    def config_dict(self) -> dict[str, Any]:
        """The kubeconfig as a dict. Errors name where it is wrong, never what it holds."""
        return self._config_dict

    @cached_property
    def _config_dict(self) -> dict[str, Any]:
        # Parsed once per adapter (checked by parse, then used by the client); libyaml's loader
        # where present: the pure-Python one costs milliseconds per dispatch.
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        try:
            data = yaml.load(self.kubeconfig or "", Loader=loader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark else ""
            raise ValueError(f"The kubeconfig is not valid YAML{where}.") from None
        if not isinstance(data, dict) or not all(
            isinstance(data.get(key), list) for key in ("clusters", "contexts", "users")
        ):
            raise ValueError("The kubeconfig needs 'clusters', 'contexts' and 'users' lists.")
        context = self.context or data.get("current-context")
        if not context:
            raise ValueError("The kubeconfig has no current-context: set 'context'.")
        names = {entry.get("name") for entry in data["contexts"] if isinstance(entry, dict)}
        if context not in names:
            raise ValueError(f"The kubeconfig has no context named {context!r}.")
        return data


class KubernetesAdapter(Adapter):
    kind = "kubernetes"
    connection_class = KubernetesConnection
    keeps_tenant_limits = True
    delivers_secrets = True

    # --- the client (one per adapter instance, built without writing the kubeconfig to disk) ----

    @cached_property
    def api_client(self) -> k8s.ApiClient:
        configuration = k8s.Configuration()
        try:
            if self.connection.in_cluster:
                k8s_config.load_incluster_config(client_configuration=configuration)
            else:
                # CA and client-key data inside the kubeconfig reach urllib3 as files: the client
                # writes those to private temporary files and removes them at exit.
                k8s_config.load_kube_config_from_dict(
                    self.connection.config_dict(),
                    context=self.connection.context,
                    client_configuration=configuration,
                    persist_config=False,
                )
        except (ConfigException, ValueError) as exc:
            raise BackendError(f"cannot use the connection settings of {self.cluster}: {exc}") from None
        if not self.connection.verify_ssl:
            configuration.verify_ssl = False
        # One retry mends a pooled connection the server closed; beyond that the Celery task's
        # own backoff retries, rather than this call multiplying its timeout.
        configuration.retries = 1
        return k8s.ApiClient(configuration)

    @cached_property
    def batch(self) -> k8s.BatchV1Api:
        return k8s.BatchV1Api(self.api_client)

    @cached_property
    def core(self) -> k8s.CoreV1Api:
        return k8s.CoreV1Api(self.api_client)

    @cached_property
    def networking(self) -> k8s.NetworkingV1Api:
        return k8s.NetworkingV1Api(self.api_client)

    # --- names ----------------------------------------------------------------------------------

    def namespace_for(self, tenant) -> str:
        return self.namespace_name(tenant.slug)

    def namespace_name(self, tenant_slug: str) -> str:
        name = f"{self.connection.namespace_prefix}{tenant_slug}"
        if len(name) > 63:
            # Cut, then tell apart tenants whose slugs share the kept part.
            digest = hashlib.sha256(tenant_slug.encode()).hexdigest()[:8]
            name = f"{name[:54].rstrip('-')}-{digest}"
        if not DNS_LABEL.fullmatch(name) or name in RESERVED_NAMESPACES or name.startswith("kube-"):
            raise JobRejected(f"{name!r} cannot be the tenant's namespace")
        return name

    @staticmethod
    def job_name(job) -> str:
        return f"{JOB_NAME_PREFIX}{dispatch_key(job)}"

    # --- the protocol ---------------------------------------------------------------------------

    def submit(self, job) -> str:
        namespace = self.namespace_for(job.tenant)
        secrets = job_secrets(job)
        body = self.job_body(job, namespace, with_secrets=bool(secrets))
        try:
            job_uid = self._create_job(namespace, body)
        except _NamespaceMissing:
            self.ensure_namespace(namespace, job.tenant.slug)
            job_uid = self._create_job(namespace, body)
        if secrets:
            self._create_secret(self.secret_body(body, job_uid, secrets))
        if getattr(job, "nodes", 1) > 1:
            self._create_gang_service(namespace, body, job_uid)
        return f"{namespace}/{body['metadata']['name']}"

    def find(self, job) -> str | None:
        namespace, name = self.namespace_for(job.tenant), self.job_name(job)
        try:
            self._request("read Jobs", self.batch.read_namespaced_job, name, namespace, expect={404})
        except ApiException:
            return None
        return f"{namespace}/{name}"

    def statuses(self, jobs: Iterable) -> dict[str, StatusReport]:
        jobs = [j for j in jobs if j.external_id]
        if not jobs:
            return {}
        listed = {item.external_id: item for item in self.list_jobs()}
        reports: dict[str, StatusReport] = {}
        failed: dict[str, str] = {}  # external id → dispatch key, for the pods' exit codes
        for job in jobs:
            item = listed.get(job.external_id)
            if item is None:
                reports[job.external_id] = self._missing_report(job)
                continue
            report = job_report(
                job.external_id,
                item,
                kueue=bool(self.connection.kueue_queue),
                seen_running=getattr(job, "started_at", None) is not None,
            )
            if report.state == BackendState.CANCELLED and getattr(job, "cancel_requested_at", None):
                report = dataclasses.replace(report, reason="")  # the portal's own cancel, mid-way
            reports[job.external_id] = report
            if report.state == BackendState.FAILED:
                failed[job.external_id] = item.labels.get(LABEL_KEY, "")
        if failed:
            outcomes = self.pod_outcomes({key for key in failed.values() if key})
            for external_id, key in failed.items():
                reports[external_id] = _with_pod_outcome(reports[external_id], outcomes.get(key))
        return reports

    def cancel(self, job) -> None:
        # Without an external id (an attempt whose dispatcher died before recording it), the
        # Job's place follows from the tenant and the dispatch key.
        if job.external_id:
            namespace, name = _split(job.external_id)
        else:
            namespace, name = self.namespace_for(job.tenant), self.job_name(job)
        try:
            current = self._request(
                "read Jobs", self.batch.read_namespaced_job, name, namespace, expect={404}
            )
        except ApiException:
            return  # already gone
        if _terminal_condition(current.status) is not None:
            return  # it ended first: leave it for the sync to report how, and for its TTL
        with contextlib.suppress(ApiException):  # 404: gone meanwhile
            # batch/v1 orphans a Job's pods by default: they would keep running on the GPUs.
            self._request(
                "delete Jobs",
                self.batch.delete_namespaced_job,
                name,
                namespace,
                propagation_policy="Background",
                expect={404},
            )

    def logs(self, job, offset: int = 0, rank: int = 0) -> LogChunk:
        offset = max(offset, 0)
        finished = bool(getattr(job, "is_terminal", False))
        data = self._log_bytes(job, limit=offset + LOG_CHUNK_BYTES, rank=rank)
        return log_chunk(data[offset:], offset, finished=finished)

    def full_log(self, job, rank: int = 0) -> Iterator[str]:
        # The API serves a log from its start only: read once, not once per chunk.
        yield self._log_bytes(job, rank=rank).decode("utf-8", "replace")

    def _log_bytes(self, job, limit: int | None = None, rank: int = 0) -> bytes:
        """The job's latest pod's log from its start (up to `limit` bytes); empty before its
        container started or once the pod is gone."""
        if not job.external_id:
            return b""
        namespace, _name = _split(job.external_id)
        pod = self._latest_pod(namespace, dispatch_key(job), rank if getattr(job, "nodes", 1) > 1 else None)
        if pod is None:
            return b""
        limits = {"limit_bytes": limit} if limit else {}
        try:
            response = self._request(
                "read pod logs",
                self.core.read_namespaced_pod_log,
                pod.metadata.name,
                namespace,
                container=CONTAINER,
                _preload_content=False,
                expect={400, 404},
                **limits,
            )
        except ApiException:
            return b""
        return response.data

    def health(self) -> Health:
        """GPUs per pool on the Ready, schedulable nodes its node selector matches; in use: the
        GPU requests of the portal's active Jobs."""
        try:
            nodes = self._request("list nodes", self.core.list_node).items
            jobs = self.list_jobs()
        except BackendError as exc:
            return Health(ok=False, message=str(exc))
        usable = [node for node in nodes if _node_usable(node)]
        in_use = _gpus_in_use(jobs)
        pools = []
        for pool in self.cluster.pools.select_related("gpu_type"):
            matching = [n for n in usable if _matches(n, pool.node_selector)]
            pools.append(
                PoolHealth(
                    gpu_type=pool.gpu_type.slug,
                    capacity=sum(_allocatable_gpus(n) for n in matching),
                    in_use=in_use.get(pool.gpu_type.slug, 0),
                    **_node_shape(matching),
                    **self.node_domains([n for n in matching if _allocatable_gpus(n)]),
                )
            )
        pools = tuple(pools)
        message = f"API server reachable; {len(usable)} of {len(nodes)} node(s) ready"
        unusable = sorted(node.metadata.name for node in nodes if not _node_usable(node))
        if unusable:
            message += f"; not ready or cordoned: {', '.join(unusable)}"
        if self.image_rule.allowed == ():
            message += "; runs no container images until 'allowed_images' or 'allow_any_image' is set"
        return Health(ok=True, message=message, pools=pools)

    def node_domains(self, nodes: list[k8s.V1Node]) -> dict[str, Any]:
        """The pool's nodes by topology domain (PoolHealth's topology_level and domains): a domain
        is named by the values of `topology_labels` down to the last one, which is its level; a
        node missing one of them is in no known domain."""
        levels = self.connection.topology_labels
        if not levels:
            return {}
        domains: dict[str, list[str]] = {}
        for node in nodes:
            labels = node.metadata.labels or {}
            if all(labels.get(level) for level in levels):
                domains.setdefault("/".join(labels[level] for level in levels), []).append(node.metadata.name)
        if not domains:
            return {}
        return {"topology_level": levels[-1], "domains": {k: tuple(sorted(v)) for k, v in domains.items()}}

    # --- node health ----------------------------------------------------------------------------

    def drain(self, target: DrainTarget, reason: str) -> None:
        """Cordon the node (spec.unschedulable, as `kubectl cordon` does), with the portal's reason
        in an annotation. Running pods stay; nothing new is scheduled there."""
        name = self._node_name(target.node)
        node = self._request("read nodes", self.core.read_node, name)
        annotations = (node.metadata.annotations if node.metadata else None) or {}
        if node.spec and node.spec.unschedulable and DRAIN_ANNOTATION not in annotations:
            return  # cordoned by an operator already: left to them
        body = {"spec": {"unschedulable": True}, "metadata": {"annotations": {DRAIN_ANNOTATION: reason}}}
        self._request("cordon nodes", self.core.patch_node, name, body)

    def resume(self, target: DrainTarget) -> bool:
        """Uncordon the node if the portal cordoned it; an operator's cordon is left alone."""
        name = self._node_name(target.node)
        node = self._request("read nodes", self.core.read_node, name)
        annotations = (node.metadata.annotations if node.metadata else None) or {}
        unschedulable = bool(node.spec and node.spec.unschedulable)
        if not unschedulable:
            return True
        if not annotations.get(DRAIN_ANNOTATION, "").startswith(DRAIN_REASON_PREFIX):
            return False
        body = {"spec": {"unschedulable": None}, "metadata": {"annotations": {DRAIN_ANNOTATION: None}}}
        self._request("uncordon nodes", self.core.patch_node, name, body)
        return True

    @staticmethod
    def _node_name(name: str) -> str:
        if not DNS_SUBDOMAIN.fullmatch(name):
            raise BackendError(f"{name!r} is not a Kubernetes node name")
        return name

    @property
    def image_rule(self) -> ImageRule:
        allowed = None if self.connection.allow_any_image else tuple(self.connection.allowed_images)
        return ImageRule(self.cluster.slug, containers=True, allowed=allowed)

    def apply_tenant_limits(self, limits: dict[str, dict[str, GpuLimit]]) -> list[str]:
        """Each tenant's namespace enforces the restricted Pod Security profile, is closed to other
        tenants by the portal's NetworkPolicy, and holds the tenant's GPU ceiling as a ResourceQuota
        on requests.nvidia.com/gpu. One list each of namespaces, of the portal's quotas and of its
        policies, then one write per thing that differs: namespaces made before these safeguards
        existed get them on the next pass. A namespace that does not exist yet is made when its
        tenant may use GPUs here. Returns the tenants whose GPU ceiling changed."""
        listed = self._items("list namespaces", self.core.list_namespace)
        namespaces = {item["metadata"]["name"]: item for item in listed}
        quotas = self._named_in_namespaces(
            "list ResourceQuotas", self.core.list_resource_quota_for_all_namespaces, QUOTA_NAME
        )
        policies = self._named_in_namespaces(
            "list NetworkPolicies", self.networking.list_network_policy_for_all_namespaces, POLICY_NAME
        )
        changed = []
        for tenant_slug, by_type in sorted(limits.items()):
            try:
                namespace = self.namespace_name(tenant_slug)
            except JobRejected as exc:
                log.warning("tenant %s gets no namespace on %s: %s", tenant_slug, self.cluster, exc)
                continue
            gpus = namespace_ceiling(by_type)
            current = namespaces.get(namespace)
            if current is None:
                if gpus == 0:
                    continue  # nothing it could run here; a dispatch would make the namespace
                self.ensure_namespace(namespace, tenant_slug)
            elif current["metadata"].get("deletionTimestamp"):
                continue  # being deleted: nothing can be made in it
            else:
                self._guard_namespace(current, tenant_slug, policies.get(namespace))
            if self._set_quota(namespace, gpus, quotas.get(namespace)):
                changed.append(tenant_slug)
        return changed

    # --- building the Job -----------------------------------------------------------------------

    def job_body(self, job, namespace: str, *, with_secrets: bool = False) -> dict[str, Any]:
        """The Job. `with_secrets`: its container takes the job's secrets from the Secret of
        the same name (secret_body), which the kubelet waits for before starting it."""
        image = getattr(job, "image", "") or ""
        refusal = self.image_rule.refusal(image)
        if refusal:
            raise JobRejected(refusal)
        key = dispatch_key(job)
        labels = {
            MANAGED_BY: MANAGER,
            LABEL_UID: str(job.uid),
            LABEL_KEY: key,
            LABEL_TENANT: job.tenant.slug,
            LABEL_GPU_TYPE: job.gpu_type.slug,
        }
        nodes = int(getattr(job, "nodes", 1) or 1)
        resources = {  # per pod: a gang has one pod per node
            GPU_RESOURCE: str(int(getattr(job, "gpus_per_node", 0) or job.gpu_count)),
            "cpu": str(int(job.cpus)),
            "memory": f"{int(job.memory_gb)}Gi",
        }
        pod_spec: dict[str, Any] = {
            "restartPolicy": "Never",
            # The user's code gets no credentials for the cluster's API.
            "automountServiceAccountToken": False,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": self.connection.run_as_user,
                "runAsGroup": self.connection.run_as_group,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": CONTAINER,
                    # Fully qualified, as checked: no registry search list can pick another image.
                    "image": normalise_image(image),
                    # The command is a shell script by definition: one argument, never spliced.
                    "command": ["/bin/sh", "-c", job.command],
                    "env": [{"name": name, "value": value} for name, value in job_env(job).items()]
                    + (self.gang_env(job, nodes) if nodes > 1 else []),
                    **(
                        {"envFrom": [{"secretRef": {"name": self.job_name(job), "optional": False}}]}
                        if with_secrets
                        else {}
                    ),
                    # Requests equal limits: extended resources (GPUs) must, and the job gets
                    # exactly what quota admission reserved for it.
                    "resources": {"requests": resources, "limits": dict(resources)},
                    "securityContext": copy.deepcopy(CONTAINER_SECURITY_CONTEXT),
                }
            ],
        }
        node_selector = self.node_selector(job)
        if node_selector:
            pod_spec["nodeSelector"] = node_selector
        spec: dict[str, Any] = {
            "backoffLimit": 0,  # a failed run fails the job: retrying is the portal's decision
            "activeDeadlineSeconds": int(job.time_limit_minutes) * 60,
            "ttlSecondsAfterFinished": self.connection.ttl_seconds_after_finished,
            "template": {"metadata": {"labels": dict(labels)}, "spec": pod_spec},
        }
        if nodes > 1:
            self.make_gang(spec, job, nodes)
            self.keep_within_domain(spec, job)
        if self.connection.kueue_queue:
            labels[KUEUE_QUEUE_LABEL] = self.connection.kueue_queue
            spec["suspend"] = True  # Kueue resumes it once the queue admits it (all pods at once)
        return {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {
                "name": self.job_name(job),
                "namespace": namespace,
                "labels": labels,
                "annotations": {ANNOTATION_NAME: job.name},
            },
            "spec": spec,
        }

    @staticmethod
    def secret_body(job_body: dict[str, Any], job_uid: str, secrets: dict[str, str]) -> dict[str, Any]:
        """The Secret holding a job's secrets: immutable, named and labelled as its Job, and owned
        by it, so that the garbage collector deletes it with the Job (cancel, TTL, namespace)."""
        meta = job_body["metadata"]
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": meta["name"],
                "namespace": meta["namespace"],
                "labels": dict(meta["labels"]),
                "ownerReferences": [
                    {"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"], "uid": job_uid}
                ],
            },
            "type": "Opaque",
            "immutable": True,
            "data": {name: base64.b64encode(value.encode()).decode() for name, value in secrets.items()},
        }

    def make_gang(self, spec: dict[str, Any], job, nodes: int) -> None:
        """An Indexed Job of one pod per node, all running at once; the pods' hostnames resolve
        through a headless Service of the Job's name (its subdomain). A rank that fails fails the
        Job at once (no partial training): the failure policy ends it on any non-zero exit, which
        makes the controller stop the other ranks."""
        spec.update(completionMode="Indexed", completions=nodes, parallelism=nodes)
        spec["podFailurePolicy"] = {
            "rules": [
                {
                    "action": "FailJob",
                    "onExitCodes": {"containerName": CONTAINER, "operator": "NotIn", "values": [0]},
                }
            ]
        }
        spec["template"]["spec"]["subdomain"] = self.job_name(job)

    def keep_within_domain(self, spec: dict[str, Any], job) -> None:
        """Where the site describes its topology, ask for all of a gang's pods within one domain
        of its last level: through Kueue's topology-aware scheduling (Kueue picks the domain when
        it admits the Job), or, without Kueue, as a preference for the domain admission placed
        the gang in."""
        labels = self.connection.topology_labels
        if not labels:
            return
        template = spec["template"]
        if self.connection.kueue_queue:
            key = KUEUE_REQUIRED_TOPOLOGY if self.connection.topology_required else KUEUE_PREFERRED_TOPOLOGY
            template["metadata"].setdefault("annotations", {})[key] = labels[-1]
            return
        domain = getattr(job, "topology_domain", "")
        if not domain:
            return
        # A domain is named by the values of each level's label, broadest first.
        values = domain.split("/")
        if len(values) != len(labels):
            return  # named under other topology settings: no preference rather than a wrong one
        terms = [
            {"key": key, "operator": "In", "values": [value]}
            for key, value in zip(labels, values, strict=True)
        ]
        template["spec"]["affinity"] = {
            "nodeAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 100, "preference": {"matchExpressions": terms}}
                ]
            }
        }

    def gang_env(self, job, nodes: int) -> list[dict[str, Any]]:
        """What each rank needs to find the others: torchrun's variables, the completion index
        as NODE_RANK."""
        name = self.job_name(job)
        hosts = [f"{name}-{index}.{name}" for index in range(nodes)]
        return [
            {"name": "MASTER_ADDR", "value": hosts[0]},
            {"name": "MASTER_PORT", "value": str(GANG_PORT)},
            {"name": "WORLD_SIZE", "value": str(nodes)},
            {"name": "FACTORY_NODE_LIST", "value": ",".join(hosts)},
            {
                "name": "NODE_RANK",
                "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX}']"}},
            },
        ]

    @staticmethod
    def gang_service(namespace: str, job_body: dict[str, Any], job_uid: str) -> dict[str, Any]:
        """The headless Service that gives a gang's pods their DNS names; the Job owns it, so it
        goes when the Job goes (cancel, TTL)."""
        name = job_body["metadata"]["name"]
        key = job_body["metadata"]["labels"][LABEL_KEY]
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {MANAGED_BY: MANAGER, LABEL_KEY: key},
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": name,
                        "uid": job_uid,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": {
                "clusterIP": "None",
                "selector": {LABEL_KEY: key},
                # Ranks look each other up before they are ready.
                "publishNotReadyAddresses": True,
            },
        }

    def _create_gang_service(self, namespace: str, job_body: dict[str, Any], job_uid: str) -> None:
        body = self.gang_service(namespace, job_body, job_uid)
        try:
            self._request(
                "create Services",
                self.core.create_namespaced_service,
                namespace,
                k8s.V1Service.model_validate(body),
                field_validation="Strict",
                expect=CLIENT_ERRORS,
            )
        except ApiException as exc:
            if exc.status != 409:  # 409: made by an earlier attempt of this dispatch
                raise JobRejected(_status_message(exc)) from None

    def node_selector(self, job) -> dict[str, str]:
        pool = self.pool_for(job)
        if pool is None:
            raise JobRejected(f"cluster {self.cluster.slug} has no {job.gpu_type.slug} GPUs")
        selector = pool.node_selector or {}
        if not isinstance(selector, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in selector.items()
        ):
            raise JobRejected(f"the node selector of pool {pool} must map label names to values")
        return dict(selector)

    # --- talking to the API server --------------------------------------------------------------

    def list_jobs(self) -> list[ListedJob]:
        """Every Job the portal made on the cluster, in one call. Only metadata and status go
        through the client's typed models: the pod templates (most of the answer) are not read,
        and typing them too made a sync of 1,000 Jobs seven times slower."""
        items = self._items("list Jobs", self.batch.list_job_for_all_namespaces, label_selector=SELECTOR)
        try:
            return [ListedJob.from_item(item) for item in items]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            detail = _first_error(exc) if isinstance(exc, pydantic.ValidationError) else type(exc).__name__
            raise BackendError(
                f"the API server of {self.cluster} answered 'list Jobs' in an unexpected shape: {detail}"
            ) from None

    def pod_outcomes(self, keys: set[str]) -> dict[str, tuple[int | None, str, bool]]:
        """(exit code, why, platform fault) of the container of each dispatch key's latest
        finished pod, from one list call for all of them."""
        if not keys:
            return {}
        selector = f"{SELECTOR},{LABEL_KEY} in ({','.join(sorted(keys))})"
        pods = self._request(
            "list pods", self.core.list_pod_for_all_namespaces, label_selector=selector
        ).items
        found: dict[str, tuple[datetime | None, int | None, str, bool]] = {}
        for pod in pods:
            key = (pod.metadata.labels or {}).get(LABEL_KEY, "")
            outcome = _pod_outcome(pod)
            if outcome is None:
                continue
            previous = found.get(key)
            if previous is None or _decides(outcome, previous):
                found[key] = outcome
        return {key: (code, why, platform) for key, (_at, code, why, platform) in found.items()}

    # --- tenant namespaces ----------------------------------------------------------------------

    def ensure_namespace(self, namespace: str, tenant_slug: str) -> None:
        """Create the tenant's namespace with its safeguards, so that not even its first pod runs
        without them: the Pod Security labels and the NetworkPolicy. Its GPU quota comes from
        apply_tenant_limits, which knows the tenant's ceilings (and runs when they change)."""
        body = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": namespace, "labels": self.namespace_labels(tenant_slug)},
        }
        created = True
        try:
            self._request("create namespaces", self.core.create_namespace, body, expect=CLIENT_ERRORS)
            log.info("created namespace %s on %s", namespace, self.cluster)
        except ApiException as exc:
            if exc.status != 409:
                raise JobRejected(_status_message(exc)) from None
            created = False
            self._label_namespace(namespace, tenant_slug)  # made meanwhile, or by hand
        try:
            self._create_policy(namespace)
        except BackendError:
            if created:
                # Not left for the next dispatch to run jobs in without isolation: that one
                # starts again from a missing namespace.
                with contextlib.suppress(BackendError, ApiException):
                    self._request("delete namespaces", self.core.delete_namespace, namespace, expect={404})
            raise

    @staticmethod
    def namespace_labels(tenant_slug: str) -> dict[str, str]:
        return {MANAGED_BY: MANAGER, LABEL_TENANT: tenant_slug, **NAMESPACE_SECURITY_LABELS}

    def network_policy(self, namespace: str) -> dict[str, Any]:
        """Tenant isolation: pods of the namespace take traffic only from each other, and reach
        each other, DNS in kube-system and, by the connection settings, public addresses and
        listed networks; never another tenant's namespace, or the cluster's private ones."""
        outside: list[dict[str, Any]] = []
        if self.connection.public_egress:
            outside += [
                {"ipBlock": {"cidr": "0.0.0.0/0", "except": list(PRIVATE_IPV4)}},
                {"ipBlock": {"cidr": "::/0", "except": list(PRIVATE_IPV6)}},
            ]
        outside += [{"ipBlock": {"cidr": cidr}} for cidr in self.connection.egress_cidrs]
        dns = [{"protocol": protocol, "port": 53} for protocol in ("UDP", "TCP")]
        kube_system = {"namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: "kube-system"}}}
        egress: list[dict[str, Any]] = [{"to": [{"podSelector": {}}]}, {"to": [kube_system], "ports": dns}]
        if outside:
            egress.append({"to": outside})
        return {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": POLICY_NAME, "namespace": namespace, "labels": {MANAGED_BY: MANAGER}},
            "spec": {
                "podSelector": {},  # every pod of the namespace
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [{"from": [{"podSelector": {}}]}],
                "egress": egress,
            },
        }

    @staticmethod
    def quota_body(namespace: str, gpus: int) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "ResourceQuota",
            "metadata": {"name": QUOTA_NAME, "namespace": namespace, "labels": {MANAGED_BY: MANAGER}},
            "spec": {"hard": {GPU_QUOTA: str(gpus)}},
        }

    def _label_namespace(self, namespace: str, tenant_slug: str) -> None:
        # A strategic merge patch: the namespace's other labels stay as they are.
        patch = {"metadata": {"labels": self.namespace_labels(tenant_slug)}}
        self._request("label namespaces", self.core.patch_namespace, namespace, patch)
        log.info("labelled namespace %s on %s with its Pod Security level", namespace, self.cluster)

    def _create_policy(self, namespace: str) -> None:
        # 409: made meanwhile; apply_tenant_limits replaces it if it differs.
        with contextlib.suppress(ApiException):
            self._request(
                "create NetworkPolicies",
                self.networking.create_namespaced_network_policy,
                namespace,
                self.network_policy(namespace),
                expect={409},
            )

    def _guard_namespace(self, namespace: dict[str, Any], tenant_slug: str, policy: dict | None) -> None:
        name = namespace["metadata"]["name"]
        labels = namespace["metadata"].get("labels") or {}
        if any(labels.get(k) != v for k, v in self.namespace_labels(tenant_slug).items()):
            self._label_namespace(name, tenant_slug)
        if policy is None:
            self._create_policy(name)
            return
        wanted = self.network_policy(name)
        if policy.get("spec") != wanted["spec"]:
            wanted["metadata"]["resourceVersion"] = policy["metadata"]["resourceVersion"]
            self._request(
                "replace NetworkPolicies",
                self.networking.replace_namespaced_network_policy,
                POLICY_NAME,
                name,
                wanted,
            )
            log.info("replaced the network policy of %s on %s", name, self.cluster)

    def _set_quota(self, namespace: str, gpus: int | None, quota: dict | None) -> bool:
        """Make the namespace's GPU quota `gpus` (None: no quota). Returns whether it changed."""
        if gpus is None:
            if quota is None:
                return False
            with contextlib.suppress(ApiException):  # 404: gone meanwhile
                self._request(
                    "delete ResourceQuotas",
                    self.core.delete_namespaced_resource_quota,
                    QUOTA_NAME,
                    namespace,
                    expect={404},
                )
            return True
        body = self.quota_body(namespace, gpus)
        if quota is None:
            create = self.core.create_namespaced_resource_quota
            self._request("create ResourceQuotas", create, namespace, body)
            return True
        if (quota.get("spec") or {}).get("hard") == body["spec"]["hard"]:
            return False
        body["metadata"]["resourceVersion"] = quota["metadata"]["resourceVersion"]
        self._request(
            "replace ResourceQuotas", self.core.replace_namespaced_resource_quota, QUOTA_NAME, namespace, body
        )
        return True

    def _named_in_namespaces(self, what: str, call: Callable[..., Any], name: str) -> dict[str, dict]:
        """The objects called `name` across namespaces, by namespace, from one list call."""
        items = self._items(what, call, field_selector=f"metadata.name={name}")
        return {item["metadata"]["namespace"]: item for item in items}

    def _items(self, what: str, call: Callable[..., Any], **kwargs) -> list[dict[str, Any]]:
        """A list call's items as the API server wrote them (no typed models: compared, not read)."""
        response = self._request(what, call, _preload_content=False, **kwargs)
        try:
            items = json.loads(response.data)["items"]
            if not all(isinstance(item["metadata"], dict) for item in items):
                raise TypeError
        except (ValueError, KeyError, TypeError) as exc:
            raise BackendError(
                f"the API server of {self.cluster} answered '{what}' in an unexpected shape: "
                f"{type(exc).__name__}"
            ) from None
        return items

    def _create_job(self, namespace: str, body: dict[str, Any]) -> str:
        """Create the Job (or find it made by an earlier attempt of this dispatch: its name is
        the dispatch key) and answer its uid."""
        try:
            # The client's own typed model: a body it would refuse is refused here, before sending.
            model = k8s.V1Job.model_validate(body)
        except pydantic.ValidationError as exc:
            raise JobRejected(f"the Job would be invalid: {_first_error(exc)}") from None
        try:
            created = self._request(
                "create Jobs",
                self.batch.create_namespaced_job,
                namespace,
                model,
                field_validation="Strict",  # an unknown field is an error, not silently dropped
                expect=CLIENT_ERRORS,
            )
        except ApiException as exc:
            if exc.status == 409 and _status_reason(exc) == "AlreadyExists":
                name = body["metadata"]["name"]
                created = self._request("read Jobs", self.batch.read_namespaced_job, name, namespace)
            elif exc.status == 404:
                raise _NamespaceMissing from None
            else:
                raise JobRejected(_status_message(exc)) from None
        return created.metadata.uid

    def _create_secret(self, body: dict[str, Any]) -> None:
        try:
            model = k8s.V1Secret.model_validate(body)
        except pydantic.ValidationError as exc:
            raise JobRejected(f"the job's Secret would be invalid: {_first_error(exc)}") from None
        try:
            self._request(
                "create Secrets",
                self.core.create_namespaced_secret,
                body["metadata"]["namespace"],
                model,
                field_validation="Strict",
                expect=CLIENT_ERRORS,
            )
        except ApiException as exc:
            if exc.status == 409 and _status_reason(exc) == "AlreadyExists":
                return  # an earlier attempt of this dispatch made it; immutable, with the same data
            # Never the server's message: it may quote what it refused.
            refusal = f"{exc.status} {_status_reason(exc)}"
            raise JobRejected(f"the cluster refused the job's Secret ({refusal})") from None

    def _latest_pod(self, namespace: str, key: str, rank: int | None = None) -> k8s.V1Pod | None:
        selector = f"{SELECTOR},{LABEL_KEY}={key}"
        if rank is not None:  # a gang's rank: the pod of that completion index
            selector += f",{COMPLETION_INDEX}={int(rank)}"
        pods = self._request(
            "list pods", self.core.list_namespaced_pod, namespace, label_selector=selector
        ).items
        return max(pods, key=lambda p: _timestamp(p.metadata.creation_timestamp), default=None)

    def _missing_report(self, job) -> StatusReport:
        if getattr(job, "cancel_requested_at", None):
            # Cancelling deletes the Job: its absence is the cancellation having worked.
            return StatusReport(job.external_id, BackendState.CANCELLED)
        return StatusReport(job.external_id, BackendState.LOST, GONE)

    def _request(self, what: str, call: Callable[..., T], *args, expect=frozenset(), **kwargs) -> T:
        """Call the API. HTTP errors whose status is in `expect` are raised as they are, for the
        caller to judge; the rest become BackendUnavailable (unreachable, server-side errors) or
        BackendError (credentials, permissions, anything else)."""
        kwargs.setdefault("_request_timeout", self.connection.request_timeout)
        try:
            return call(*args, **kwargs)
        except ApiException as exc:
            if exc.status in expect:
                raise
            raise self._error(what, exc) from None
        except urllib3.exceptions.HTTPError as exc:
            reason = getattr(exc, "reason", None) or exc
            raise BackendUnavailable(
                f"the API server of {self.cluster} did not answer ({what}): {type(reason).__name__}"
            ) from None
        except pydantic.ValidationError as exc:
            raise BackendError(
                f"the API server of {self.cluster} answered '{what}' in an unexpected shape: "
                f"{_first_error(exc)}"
            ) from None

    def _error(self, what: str, exc: ApiException) -> BackendError:
        status = exc.status or 0
        if status == 0 or status == 429 or status >= 500:
            return BackendUnavailable(
                f"the API server of {self.cluster} could not {what}: {_status_message(exc)}"
            )
        if status == 401:
            return BackendError(f"the API server of {self.cluster} refused the credentials")
        if status == 403:
            return BackendError(
                f"the portal may not {what} on {self.cluster}; grant its account that permission "
                f"({_status_message(exc)})"
            )
        return BackendError(f"the API server of {self.cluster} refused to {what}: {_status_message(exc)}")


class _NamespaceMissing(Exception):
    pass


@dataclasses.dataclass(frozen=True)
class ListedJob:
    """What a sync reads of one Job."""

    metadata: k8s.V1ObjectMeta
    status: k8s.V1JobStatus
    gpus: int  # nvidia.com/gpu its pod requests

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> ListedJob:
        containers = item.get("spec", {}).get("template", {}).get("spec", {}).get("containers") or []
        requests = [((c.get("resources") or {}).get("requests") or {}) for c in containers]
        return cls(
            metadata=k8s.V1ObjectMeta.from_dict(item["metadata"]),
            status=k8s.V1JobStatus.from_dict(item.get("status") or {}),
            gpus=sum(_quantity(r.get(GPU_RESOURCE)) for r in requests),
        )

    @property
    def external_id(self) -> str:
        return f"{self.metadata.namespace}/{self.metadata.name}"

    @property
    def labels(self) -> dict[str, str]:
        return self.metadata.labels or {}


# --- reading Jobs and pods (pure functions of the client's models) -------------------------------


def job_report(external_id: str, job: ListedJob, *, kueue: bool, seen_running: bool) -> StatusReport:
    """What the portal should believe about one Job."""
    status = job.status
    true = {c.type: c for c in status.conditions or [] if c.status == "True"}
    started = status.start_time
    terminal = _terminal_condition(status)
    if terminal is not None and terminal.type == "Complete":
        ended = status.completion_time or terminal.last_transition_time
        return StatusReport(external_id, BackendState.SUCCEEDED, "", started, ended, exit_code=0)
    if terminal is not None:  # Failed: no completionTime, the condition says when
        ended = terminal.last_transition_time
        if terminal.reason == "DeadlineExceeded":
            return StatusReport(external_id, BackendState.TIMED_OUT, "time limit reached", started, ended)
        reason = FAILURE_REASONS.get(terminal.reason or "")
        if reason is None:
            reason = ": ".join(part for part in (terminal.reason, terminal.message) if part)
        return StatusReport(external_id, BackendState.FAILED, reason, started, ended)
    if job.metadata.deletion_timestamp is not None:
        return StatusReport(external_id, BackendState.CANCELLED, "the Job was deleted on the cluster")
    if "Suspended" in true:
        # A suspended Job keeps the startTime of its last run: a start means it was preempted.
        reason = (KUEUE_PREEMPTED if started else KUEUE_WAITING) if kueue else SUSPENDED
        return StatusReport(external_id, BackendState.QUEUED, reason)
    if started is None:
        return StatusReport(external_id, BackendState.QUEUED)
    if status.ready == 0 and (status.active or 0) > 0:
        # Its pod waits for a node or an image. Said only before the portal saw it run: a running
        # job's pod briefly reads the same between its end and the Job's terminal condition.
        return StatusReport(external_id, BackendState.QUEUED, "" if seen_running else POD_WAITING)
    # Running, or decided (SuccessCriteriaMet/FailureTarget) with pods still terminating.
    return StatusReport(external_id, BackendState.RUNNING, started_at=started)


def _terminal_condition(status: k8s.V1JobStatus | None) -> k8s.V1JobCondition | None:
    for condition in (status.conditions if status else None) or []:
        if condition.type in ("Complete", "Failed") and condition.status == "True":
            return condition
    return None


def _decides(outcome: tuple, other: tuple) -> bool:
    """Whether one pod's outcome, rather than another's of the same attempt, says how the job
    ended: a failure over a success (a gang's failing rank, not those stopped after it), then
    the first failure, else the latest pod."""
    failed, other_failed = bool(outcome[1]), bool(other[1])
    if failed != other_failed:
        return failed
    if failed:
        return _timestamp(outcome[0]) < _timestamp(other[0])
    return _timestamp(outcome[0]) >= _timestamp(other[0])


def _pod_outcome(pod: k8s.V1Pod) -> tuple[datetime | None, int | None, str, bool] | None:
    """(finished at, exit code, why, platform fault) of the job's container in a pod that ended,
    else None. An evicted pod, one on a lost node, or one Kubernetes marked as disrupted ended
    through no fault of the job."""
    status = pod.status or k8s.V1PodStatus()
    platform = status.reason in PLATFORM_POD_REASONS or any(
        c.type == "DisruptionTarget" and c.status == "True" for c in status.conditions or []
    )
    pod_why = POD_REASONS.get(status.reason or "", "")
    for container in status.container_statuses or []:
        terminated = container.state.terminated if container.name == CONTAINER and container.state else None
        if terminated is not None:
            why = pod_why or POD_REASONS.get(terminated.reason or "", "")
            return terminated.finished_at, terminated.exit_code, why, platform
    if status.phase == "Failed":  # evicted or lost before its container ran
        why = pod_why or (status.message or status.reason or "its pod failed")
        return None, None, why, platform
    return None


def _with_pod_outcome(report: StatusReport, outcome: tuple[int | None, str, bool] | None) -> StatusReport:
    if outcome is None:
        return dataclasses.replace(report, reason=report.reason or "its pod is gone; exit code unknown")
    exit_code, why, platform = outcome
    reason = "; ".join(part for part in (report.reason, why) if part)
    return dataclasses.replace(report, exit_code=exit_code, reason=reason, platform_fault=platform)


def namespace_ceiling(by_type: dict[str, GpuLimit]) -> int | None:
    """GPUs a tenant's namespace may request at once. Kubernetes counts every GPU type as the
    one resource nvidia.com/gpu, so the namespace holds the sum of the tenant's ceilings over the
    cluster's GPU types (None, no quota, when one of them is unlimited); the ceiling of each type,
    and per job, stays with the portal's admission."""
    totals = [limit.total for limit in by_type.values()]
    if any(total is None for total in totals):
        return None
    return sum(totals)


def _gpus_in_use(jobs: list[ListedJob]) -> dict[str, int]:
    """GPUs requested by the portal's Jobs that hold pods now, per GPU type label."""
    used: dict[str, int] = {}
    for job in jobs:
        if _terminal_condition(job.status) is None and job.status.active:
            gpu_type = job.labels.get(LABEL_GPU_TYPE, "")
            used[gpu_type] = used.get(gpu_type, 0) + job.gpus
    return used


def _node_usable(node: k8s.V1Node) -> bool:
    if node.spec is not None and node.spec.unschedulable:
        return False
    conditions = (node.status.conditions if node.status else None) or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


def _allocatable_gpus(node: k8s.V1Node) -> int:
    allocatable = (node.status.allocatable if node.status else None) or {}
    return _quantity(allocatable.get(GPU_RESOURCE))


def _node_shape(nodes: list[k8s.V1Node]) -> dict[str, int | None]:
    """A pool's node shape from its nodes' allocatable resources: how many have GPUs, and the
    largest one's GPUs, CPUs and memory (MB)."""
    with_gpus = [n for n in nodes if _allocatable_gpus(n)]
    if not with_gpus:
        return {}

    def most(resource: str, unit: int) -> int | None:
        values = []
        for node in with_gpus:
            try:
                values.append(int(parse_quantity((node.status.allocatable or {}).get(resource) or 0) / unit))
            except ValueError:
                continue
        return max(values, default=0) or None

    return {
        "nodes": len(with_gpus),
        "gpus_per_node": max(_allocatable_gpus(n) for n in with_gpus),
        "cpus_per_node": most("cpu", 1),
        "memory_mb_per_node": most("memory", 1024 * 1024),  # MiB, as Slurm counts MB
    }


def _matches(node: k8s.V1Node, selector: dict[str, str] | None) -> bool:
    labels = node.metadata.labels or {}
    return all(labels.get(key) == value for key, value in (selector or {}).items())


def _timestamp(value: datetime | None) -> float:
    return value.timestamp() if value else 0.0


def _quantity(value: str | None) -> int:
    """GPU counts are whole numbers ("8"); anything else counts as none."""
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


# --- errors ---------------------------------------------------------------------------------------


def _status(exc: ApiException) -> dict[str, Any]:
    try:
        body = json.loads(exc.body or "")
    except (TypeError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def _status_reason(exc: ApiException) -> str:
    return str(_status(exc).get("reason") or "")


def _status_message(exc: ApiException) -> str:
    """The API server's own words (a Status object's message), never the request or headers."""
    message = _status(exc).get("message")
    if message:
        return str(message)[:500]
    return f"HTTP {exc.status} {exc.reason or ''}".strip()


def _first_error(exc: pydantic.ValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return "invalid"
    first = errors[0]
    where = ".".join(str(part) for part in first.get("loc", ()))
    return f"{where}: {first.get('msg', 'invalid')}"


def _split(external_id: str) -> tuple[str, str]:
    namespace, _, name = external_id.partition("/")
    if not (DNS_LABEL.fullmatch(namespace) and name):
        raise BackendError(f"{external_id!r} is not a Kubernetes Job id")
    return namespace, name
