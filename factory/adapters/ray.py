"""The `ray` backend: Ray Jobs on a Ray head, driven through the dashboard's REST API.

Plain HTTP with the standard library, so the portal needs no `ray` package at run time; the SDK's
JobSubmissionClient wraps the same endpoints and would bring all of Ray (and aiohttp) with it.

- submit: submission id `aif-<job uid>`. It is looked up first, and Ray's "already exists" answer
  to a racing duplicate counts as success once a second lookup finds the job. The entrypoint is
  `bash -c <shell-quoted command>`: Ray hands every entrypoint to /bin/sh, which removes exactly
  that one layer of quoting, so bash runs the command verbatim. GPUs, CPUs and memory are reserved
  for the entrypoint itself (`entrypoint_num_gpus/_cpus/_memory`); Ray sets CUDA_VISIBLE_DEVICES.
- env: sent as `runtime_env.env_vars`, which the job's Ray tasks inherit too. Ray expands `$NAME`
  in those values (os.path.expandvars), so any value with a `$` is also exported, shell-quoted,
  ahead of the command: the command sees every value exactly as given.
- statuses: one `GET /api/jobs/` per sync for all jobs. Ray's `start_time` is when it accepted the
  job, not when the job began to run, so a running job is reported without a start time (the portal
  stamps the sync that first sees it running) and a job that ended between two syncs has none.
- time limits: Ray Jobs have none. A sync that finds a job running past its limit asks Ray to stop
  it, and reports it timed out once Ray says it stopped (until then its GPUs are still held).
- cancel: `POST /api/jobs/<id>/stop`. Ray cannot stop a job that still waits for resources: the
  stop takes effect only when Ray starts it (the command may run for about a second) or when the
  head's start timeout (RAY_JOB_START_TIMEOUT_SECONDS, 900 s by default) fails it. Until then the
  job is reported queued, with that reason.
- logs: Ray answers with the whole log; it is sliced here from the byte offset.
- health: GPU and CPU totals from `/api/cluster_status`, per pool.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import logging
import math
import re
import shlex
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pydantic

from .base import (
    Adapter,
    BackendError,
    BackendState,
    BackendUnavailable,
    Health,
    JobRejected,
    LogChunk,
    PoolHealth,
    StatusReport,
    dispatch_key,
    job_env,
    job_secrets,
    slice_log,
)
from .connection import Connection

log = logging.getLogger(__name__)

SUBMISSION_PREFIX = "aif-"
HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$")
ACCELERATOR_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
ACCELERATOR_RESOURCE = "accelerator_type:"
# Ray gives each node of a GPU model one unit of `accelerator_type:<model>`; asking for a sliver of
# it pins a job to that model without using the marker up.
ACCELERATOR_SHARE = 0.001
GIB = 1024**3

STATES: dict[str, BackendState] = {
    "PENDING": BackendState.QUEUED,
    "RUNNING": BackendState.RUNNING,
    "SUCCEEDED": BackendState.SUCCEEDED,
    "FAILED": BackendState.FAILED,
    "STOPPED": BackendState.CANCELLED,
}

WAITING = "waiting for free GPUs, CPUs or memory on the Ray cluster"
WAITING_TO_STOP = (
    "cancel requested: Ray stops a job that waits for resources only when it would start, "
    "or fails it at the head's start timeout"
)
# Ray's error types, in words, for failures that are not the command's own exit code.
FAILURES = {
    "JOB_SUPERVISOR_ACTOR_START_TIMEOUT": "Ray found no free resources for it before its start timeout",
    "JOB_SUPERVISOR_ACTOR_UNSCHEDULABLE": "no node of the Ray cluster has the resources it asks for",
    "JOB_SUPERVISOR_ACTOR_START_FAILURE": "Ray could not start the process supervising it",
    "JOB_SUPERVISOR_ACTOR_DIED": "Ray lost the process supervising it (a node may have failed)",
    "JOB_SUPERVISOR_ACTOR_UNKNOWN_FAILURE": "the process supervising it failed",
    "RUNTIME_ENV_SETUP_FAILURE": "Ray could not set up its runtime environment",
    "JOB_ENTRYPOINT_COMMAND_START_ERROR": "Ray could not start the command",
}
NEVER_STARTED = {"JOB_SUPERVISOR_ACTOR_START_TIMEOUT", "JOB_SUPERVISOR_ACTOR_UNSCHEDULABLE"}
# Ray itself failed the job (a dead node takes its supervisor along): not the job's doing, not billed.
PLATFORM_FAILURES = {
    "JOB_SUPERVISOR_ACTOR_DIED",
    "JOB_SUPERVISOR_ACTOR_START_FAILURE",
    "JOB_SUPERVISOR_ACTOR_UNKNOWN_FAILURE",
}
# A 500 from the head that wraps the job agent's own 4xx: the request itself was refused.
AGENT_REFUSAL = re.compile(r"Request failed with status code 4\d\d")
EXIT_CODE_IN_MESSAGE = re.compile(r"exit code (-?\d+)")


class RayConnection(Connection):
    address: str  # the head's dashboard, e.g. http://ray-head:8265
    token: str | None = pydantic.Field(default=None, repr=False)  # Ray token auth (bearer)
    headers: dict | None = pydantic.Field(default=None, repr=False)  # e.g. for a proxy in front
    timeout: float = 10.0
    # Pool GPU type → Ray accelerator type ({"h100": "H100"}) for clusters with several GPU models;
    # without it all of Ray's GPUs belong to the cluster's one pool.
    accelerator_types: dict | None = None

    @pydantic.field_validator("address")
    @classmethod
    def _http_url(cls, address: str) -> str:
        parts = urllib.parse.urlsplit(address)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("Connection setting 'address' must be an http:// or https:// URL.")
        if parts.username or parts.password or parts.query or parts.fragment:
            # Credentials belong in `token`, which is never shown back; a URL is shown in messages.
            raise ValueError("Connection setting 'address' takes no credentials, query or fragment.")
        return address

    @pydantic.field_validator("token")
    @classmethod
    def _single_line(cls, token: str | None) -> str | None:
        if token is not None and (not token or _has_line_break(token)):
            raise ValueError("Connection setting 'token' must be a non-empty single line.")
        return token

    @pydantic.field_validator("headers")
    @classmethod
    def _http_headers(cls, headers: dict | None) -> dict | None:
        for name, value in (headers or {}).items():
            if not HEADER_NAME.fullmatch(name) or not isinstance(value, str) or _has_line_break(value):
                raise ValueError(f"Connection header {name!r} is not a valid HTTP header.")
        return headers

    @pydantic.field_validator("timeout")
    @classmethod
    def _positive(cls, timeout: float) -> float:
        if timeout <= 0:
            raise ValueError("Connection setting 'timeout' must be positive.")
        return timeout

    @pydantic.field_validator("accelerator_types")
    @classmethod
    def _accelerator_names(cls, mapping: dict | None) -> dict | None:
        for gpu_type, accelerator in (mapping or {}).items():
            if not isinstance(accelerator, str) or not ACCELERATOR_NAME.fullmatch(accelerator):
                raise ValueError(f"Accelerator type for {gpu_type!r} must be a name like 'H100'.")
        return mapping


def _has_line_break(text: str) -> bool:
    return "\r" in text or "\n" in text


@dataclasses.dataclass(frozen=True)
class Reply:
    status: int
    text: str

    def json(self) -> Any:
        try:
            return json.loads(self.text)
        except json.JSONDecodeError:
            raise BackendUnavailable(f"Ray answered with unreadable JSON: {self.text[:200]!r}") from None


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect would carry the bearer token to wherever it points: answer with it instead."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


class RayDashboard:
    """The head's REST API: one method that sends a request and turns transport failures into
    BackendUnavailable. Every HTTP status comes back to the caller, which knows what it means."""

    opener = urllib.request.build_opener(_NoRedirects)

    def __init__(self, connection: RayConnection) -> None:
        self.base = connection.address.rstrip("/")
        self.timeout = connection.timeout
        self.headers = {"Accept": "application/json", "User-Agent": "aifactory-portal"}
        self.headers.update(connection.headers or {})
        if connection.token:
            self.headers["Authorization"] = f"Bearer {connection.token}"

    def request(self, method: str, path: str, body: dict | None = None) -> Reply:
        data = json.dumps(body).encode() if body is not None else None
        headers = dict(self.headers, **({"Content-Type": "application/json"} if data else {}))
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with self.opener.open(request, timeout=self.timeout) as response:
                return Reply(response.status, response.read().decode("utf-8", "replace"))
        except urllib.error.HTTPError as exc:
            return Reply(exc.code, exc.read().decode("utf-8", "replace"))
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, TimeoutError):
                reason = f"no answer within {self.timeout:g} s"
            raise BackendUnavailable(f"Ray head at {self.base} is unreachable: {reason}") from None


class RayAdapter(Adapter):
    kind = "ray"
    connection_class = RayConnection
    delivers_secrets = True

    def __init__(self, cluster) -> None:
        super().__init__(cluster)
        self.dashboard = RayDashboard(self.connection)

    @staticmethod
    def submission_id(job) -> str:
        """Ray's name for this attempt: a requeued job is a new submission, never its stopped
        earlier one."""
        return f"{SUBMISSION_PREFIX}{dispatch_key(job)}"

    # --- the protocol ---------------------------------------------------------------------------

    def submit(self, job) -> str:
        submission_id = self.submission_id(job)
        if self.find(job) is not None:
            return submission_id
        reply = self.dashboard.request("POST", "/api/jobs/", self.submission(job))
        if reply.status == 200:
            return submission_id
        if "already exists" in reply.text and self.find(job) is not None:
            # A concurrent dispatch got there first (Ray says so with a 500, not a 409).
            return submission_id
        raise _submit_error(reply)

    def find(self, job) -> str | None:
        submission_id = self.submission_id(job)
        reply = self.dashboard.request("GET", f"/api/jobs/{submission_id}")
        if reply.status == 404:
            return None
        _raise_for_status(reply, "looking up a job")
        return submission_id

    def statuses(self, jobs) -> dict[str, StatusReport]:
        jobs = [j for j in jobs if j.external_id]
        if not jobs:
            return {}
        listed = {entry.get("submission_id"): entry for entry in self.list_jobs()}
        now = datetime.now(UTC)
        reports = {}
        for job in jobs:
            entry = listed.get(job.external_id)
            if entry is None:
                reports[job.external_id] = StatusReport(
                    job.external_id, BackendState.LOST, "the Ray head no longer knows this job"
                )
            else:
                reports[job.external_id] = self.report(job, entry, now)
        return reports

    def list_jobs(self) -> list[dict]:
        reply = self.dashboard.request("GET", "/api/jobs/")
        _raise_for_status(reply, "listing jobs")
        entries = reply.json()
        if not isinstance(entries, list):
            raise BackendUnavailable(f"Ray listed its jobs as {type(entries).__name__}, not a list")
        # Drivers started with plain `ray.init()` are listed too; only submissions are ours.
        return [e for e in entries if isinstance(e, dict) and e.get("type", "SUBMISSION") == "SUBMISSION"]

    def cancel(self, job) -> None:
        # By dispatch key, not external_id: a dispatch cancelled in flight withdraws a job whose
        # id the portal never stored.
        reply = self.dashboard.request("POST", f"/api/jobs/{self.submission_id(job)}/stop")
        if reply.status == 404:
            return  # it never reached Ray: nothing to stop
        _raise_for_status(reply, "stopping a job")

    def logs(self, job, offset: int = 0, rank: int = 0) -> LogChunk:
        offset = max(offset, 0)
        finished = bool(getattr(job, "is_terminal", False))
        return slice_log(self._log_text(job).encode("utf-8"), offset, finished=finished)

    def full_log(self, job, rank: int = 0) -> Iterator[str]:
        yield self._log_text(job)  # Ray answers with the whole log: fetched once

    def _log_text(self, job) -> str:
        reply = self.dashboard.request("GET", f"/api/jobs/{self.submission_id(job)}/logs")
        if reply.status == 404:
            return ""
        _raise_for_status(reply, "reading logs")
        return reply.json().get("logs") or ""

    def health(self) -> Health:
        try:
            reply = self.dashboard.request("GET", "/api/cluster_status")
            _raise_for_status(reply, "reading the cluster status")
            body = reply.json()
        except BackendError as exc:
            return Health(ok=False, message=str(exc))
        report = _load_report(body)
        usage = report.get("usage") or {}
        if "CPU" not in usage:
            return Health(ok=False, message="Ray has not reported its resources yet (is the head starting?)")
        gpu_used, gpu_total = _used_total(usage, "GPU")
        cpu_used, cpu_total = _used_total(usage, "CPU")
        nodes = report.get("usageByNode") or {"cluster": usage}
        message = (
            f"{len(nodes)} node(s); {gpu_used:g}/{gpu_total:g} GPUs and "
            f"{cpu_used:g}/{cpu_total:g} CPUs in use"
        )
        return Health(ok=True, message=message, pools=self.pool_health(nodes))

    # --- building the submission ----------------------------------------------------------------

    def submission(self, job) -> dict[str, Any]:
        env = {**job_env(job), **gang_env(job)}
        body: dict[str, Any] = {
            "submission_id": self.submission_id(job),
            "entrypoint": entrypoint(job.command, env),
            # A gang's driver holds no GPU: its code asks Ray for its workers' (see gang_env).
            "entrypoint_num_gpus": 0 if getattr(job, "nodes", 1) > 1 else int(job.gpu_count),
            "entrypoint_num_cpus": int(job.cpus),
            "entrypoint_memory": int(job.memory_gb) * GIB,
            # Secrets only in the runtime env, never in the entrypoint (Ray shows and logs it).
            "runtime_env": {"env_vars": {**env, **job_secrets(job)}},
            "metadata": {
                "aif_job_uid": str(job.uid),
                "aif_job_name": str(job.name),
                "aif_tenant": job.tenant.slug,
                "aif_cluster": self.cluster.slug,
            },
        }
        accelerator = self.accelerator_for(job)
        if accelerator:
            body["entrypoint_resources"] = {ACCELERATOR_RESOURCE + accelerator: ACCELERATOR_SHARE}
        return body

    def accelerator_for(self, job) -> str | None:
        """The Ray accelerator type that pins the job to its GPU model, if the cluster maps them."""
        gpu_type = job.gpu_type.slug
        mapping = self.connection.accelerator_types
        if mapping:
            if gpu_type not in mapping:
                raise JobRejected(f"cluster {self.cluster.slug} maps no Ray accelerator type to {gpu_type}")
            return mapping[gpu_type]
        if self.pool_for(job) is None:
            raise JobRejected(f"cluster {self.cluster.slug} has no {gpu_type} GPUs")
        return None

    # --- reading state --------------------------------------------------------------------------

    def report(self, job, entry: dict, now: datetime) -> StatusReport:
        status = str(entry.get("status", "")).upper()
        state = STATES.get(status, BackendState.QUEUED)
        external_id = job.external_id
        if state == BackendState.QUEUED:
            reason = WAITING_TO_STOP if getattr(job, "cancel_requested_at", None) else WAITING
            return StatusReport(external_id, state, reason)
        if state == BackendState.RUNNING:
            deadline = _deadline(job)
            if deadline is None or now < deadline:
                return StatusReport(external_id, state)
            self.stop_overdue(job)
            return StatusReport(external_id, state, "time limit reached: stopping the job")
        ended_at = _epoch_ms(entry.get("end_time")) or now
        exit_code, reason = _outcome(entry)
        error_type = entry.get("error_type") or ""
        if status == "STOPPED":
            state, reason = self._stopped(job, ended_at)
        elif error_type in NEVER_STARTED and getattr(job, "cancel_requested_at", None):
            state, reason = BackendState.CANCELLED, "cancelled before Ray could start it"
        platform = state == BackendState.FAILED and error_type in PLATFORM_FAILURES
        return StatusReport(
            external_id, state, reason, ended_at=ended_at, exit_code=exit_code, platform_fault=platform
        )

    @staticmethod
    def _stopped(job, ended_at: datetime) -> tuple[BackendState, str]:
        deadline = _deadline(job)
        cancelled_at = getattr(job, "cancel_requested_at", None)
        if deadline and ended_at >= deadline and not (cancelled_at and cancelled_at < deadline):
            return BackendState.TIMED_OUT, f"time limit of {job.time_limit_minutes} min reached"
        if cancelled_at:
            return BackendState.CANCELLED, ""
        return BackendState.CANCELLED, "stopped on the Ray cluster, not through the portal"

    def stop_overdue(self, job) -> None:
        try:
            self.cancel(job)
        except BackendError as exc:
            # The next sync finds it still running and asks again.
            log.warning("could not stop overdue Ray job %s: %s", job.external_id, exc)

    def pool_health(self, nodes: dict[str, dict]) -> tuple[PoolHealth, ...]:
        """GPUs per pool: by accelerator type where the cluster maps them, else all in its one
        pool ("gpu" if it has several and no mapping). A mapped model Ray has none of shows 0."""
        mapping = self.connection.accelerator_types or {}
        by_resource = {
            _dashboard_name(ACCELERATOR_RESOURCE + accelerator): gpu_type
            for gpu_type, accelerator in mapping.items()
        }
        slugs = list(self.cluster.pools.values_list("gpu_type__slug", flat=True))
        untyped = slugs[0] if len(slugs) == 1 else "gpu"
        totals = {gpu_type: [0.0, 0.0] for gpu_type in (mapping or [untyped])}
        shapes: dict[str, list[int]] = {}  # GPU type: [nodes, GPUs, CPUs, memory MB] (largest node)
        for resources in nodes.values():
            used, total = _used_total(resources, "GPU")
            if not total:
                continue  # a CPU-only node
            gpu_type = next((by_resource[name] for name in resources if name in by_resource), untyped)
            entry = totals.setdefault(gpu_type, [0.0, 0.0])
            entry[0] += used
            entry[1] += total
            shape = shapes.setdefault(gpu_type, [0, 0, 0, 0])
            shape[0] += 1
            shape[1] = max(shape[1], int(total))
            shape[2] = max(shape[2], int(_used_total(resources, "CPU")[1]))
            shape[3] = max(shape[3], int(_used_total(resources, "memory")[1] / 2**20))
        return tuple(
            PoolHealth(
                gpu_type=gpu_type,
                capacity=int(total),
                in_use=math.ceil(used),
                **_shape_fields(shapes.get(gpu_type)),
            )
            for gpu_type, (used, total) in sorted(totals.items())
        )


def gang_env(job) -> dict[str, str]:
    """What a job on several nodes is told of its shape. On Ray the portal starts the job's driver
    only; its own code (Ray Train's ScalingConfig(num_workers=WORLD_SIZE, use_gpu=True,
    resources_per_worker={"GPU": FACTORY_GPUS_PER_NODE}, placement_strategy="STRICT_SPREAD"), or
    a placement group of its own) asks Ray for the workers' GPUs, which Ray gives all at once."""
    nodes = int(getattr(job, "nodes", 1) or 1)
    if nodes == 1:
        return {}
    return {
        "WORLD_SIZE": str(nodes),
        "FACTORY_NODES": str(nodes),
        "FACTORY_GPUS_PER_NODE": str(int(job.gpus_per_node)),
        "FACTORY_CPUS_PER_NODE": str(int(job.cpus)),
    }


def entrypoint(command: str, env: dict[str, str]) -> str:
    """`bash -c <command>`, quoted once for the /bin/sh that Ray runs entrypoints with. Values
    Ray would expand (`$NAME`) are exported verbatim ahead of the command."""
    exports = "".join(f"export {name}={shlex.quote(value)}\n" for name, value in env.items() if "$" in value)
    return "bash -c " + shlex.quote(exports + command)


def _raise_for_status(reply: Reply, doing: str) -> None:
    if reply.status == 200:
        return
    if reply.status in (401, 403, 407):
        raise BackendUnavailable(f"Ray refused the portal's credentials while {doing} ({reply.status})")
    raise BackendUnavailable(f"Ray answered {reply.status} while {doing}: {_ray_message(reply.text)}")


def _submit_error(reply: Reply) -> BackendError:
    """A refused request is the job's fault (JobRejected); anything else may pass (retry)."""
    refused = 400 <= reply.status < 500 and reply.status not in (401, 403, 404, 407, 408, 429)
    if refused or (reply.status == 500 and AGENT_REFUSAL.search(reply.text)):
        return JobRejected(f"Ray refused the job: {_ray_message(reply.text)}")
    try:
        _raise_for_status(reply, "submitting a job")
    except BackendUnavailable as exc:
        return exc
    return BackendUnavailable(f"Ray answered {reply.status} while submitting a job")


def _ray_message(text: str) -> str:
    """Ray's errors are Python tracebacks: the last line says what went wrong."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip() not in ("", ".")]
    return (lines[-1] if lines else "no details")[:300]


def _outcome(entry: dict) -> tuple[int | None, str]:
    """Exit code and reason of a job Ray reports as ended."""
    status = str(entry.get("status", "")).upper()
    code = entry.get("driver_exit_code")
    message = entry.get("message") or ""
    if code is None:
        match = EXIT_CODE_IN_MESSAGE.search(message)
        code = int(match[1]) if match else None
    if code is not None and code < 0:
        code = 128 - code  # killed by signal N: a shell would say 128 + N
    if status == "SUCCEEDED":
        return (0 if code is None else code), ""
    error_type = entry.get("error_type") or ""
    if status != "FAILED" or error_type == "JOB_ENTRYPOINT_COMMAND_ERROR":
        return code, ""
    first_line = message.strip().splitlines()[0][:200] if message.strip() else ""
    reason = FAILURES.get(error_type) or f"Ray says: {first_line or error_type or 'failed'}"
    return code, reason


def _deadline(job) -> datetime | None:
    started_at = getattr(job, "started_at", None)
    if started_at is None:
        return None
    return started_at + timedelta(minutes=job.time_limit_minutes)


def _epoch_ms(value) -> datetime | None:
    if not value:
        return None
    return datetime.fromtimestamp(int(value) / 1000, tz=UTC)


def _load_report(body: Any) -> dict:
    """The resource report inside /api/cluster_status; empty while the head is starting."""
    data = body.get("data") if isinstance(body, dict) else None
    status = data.get("clusterStatus") if isinstance(data, dict) else None
    report = status.get("loadMetricsReport") if isinstance(status, dict) else None
    return report if isinstance(report, dict) else {}


def _dashboard_name(resource: str) -> str:
    """A resource name as /api/cluster_status spells it: the dashboard camel-cases every key
    ("accelerator_type:H100" → "acceleratorType:H100"), the way Ray's to_camel_case does."""
    first, *rest = resource.split("_")
    return first + "".join(part.title() for part in rest)


def _used_total(resources: dict, name: str) -> tuple[float, float]:
    value = resources.get(name) or [0, 0]
    return float(value[0]), float(value[1])


def _shape_fields(shape: list[int] | None) -> dict[str, int | None]:
    if not shape:
        return {}
    nodes, gpus, cpus, memory = shape
    return {
        "nodes": nodes,
        "gpus_per_node": gpus,
        "cpus_per_node": cpus or None,
        "memory_mb_per_node": memory or None,
    }
