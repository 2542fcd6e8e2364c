"""The protocol every backend implements, and the plain data it answers with.

Adapters take job objects by duck typing (uid, name, command, env, gpu_type, gpu_count, cpus,
memory_gb, time_limit_minutes, external_id, tenant, owner_id) so that this bottom layer never
imports `jobs`.
"""

from __future__ import annotations

import codecs
import dataclasses
import enum
import re
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from .connection import Connection

LOG_CHUNK_BYTES = 64 * 1024
# A job's environment variable names: jobs' validators refuse others at submission, and every
# adapter checks again, since a backend's shell would misread them.
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
ENV_NAME = re.compile(ENV_NAME_PATTERN)
# A POSIX user name: lower case, as useradd accepts by default, at most 32 characters. Matched
# whole (\A, \Z: with `$` a trailing newline would pass). The portal refuses others when an admin
# sets one, and adapters that run jobs as their owner check again before use.
POSIX_USERNAME_PATTERN = r"\A[a-z_][a-z0-9_-]{0,31}\Z"
POSIX_USERNAME = re.compile(POSIX_USERNAME_PATTERN)

# Container image references, by the grammar of the distribution project's reference package
# (what Docker, containerd and CRI-O parse): ASCII only, no whitespace or shell syntax can fit.
IMAGE_MAX_LENGTH = 512
IMAGE_NAME_MAX_LENGTH = 255
DEFAULT_REGISTRY = "docker.io"
DEFAULT_REGISTRY_ALIASES = frozenset({"index.docker.io", "registry-1.docker.io"})
_DOMAIN_COMPONENT = r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])"
_IMAGE_DOMAIN = re.compile(rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*(?::[0-9]+)?")
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[_.]|__|-+)[a-z0-9]+)*"
_IMAGE_PATH = re.compile(rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*")
_IMAGE_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_IMAGE_DIGEST = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}")


class BackendError(Exception):
    """The backend refused or failed in a way that retrying will not mend."""


class BackendUnavailable(BackendError):
    """The backend could not be reached or answered with a transient error: retry later."""


class JobRejected(BackendError):
    """The backend will never run this job as specified (bad partition, impossible resources)."""


class BackendState(enum.StrEnum):
    QUEUED = "queued"  # accepted, waiting inside the backend
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    LOST = "lost"  # the backend has no record of the job

    @property
    def is_terminal(self) -> bool:
        return self in {self.SUCCEEDED, self.FAILED, self.CANCELLED, self.TIMED_OUT}


@dataclasses.dataclass(frozen=True)
class StatusReport:
    external_id: str
    state: BackendState
    reason: str = ""
    started_at: datetime | None = None
    ended_at: datetime | None = None
    exit_code: int | None = None
    platform_fault: bool = False  # the platform, not the job, ended it (node failure): not billed
    nodes: tuple[str, ...] = ()  # the nodes it runs or ran on, where the backend says


@dataclasses.dataclass(frozen=True)
class GpuLimit:
    """A tenant's ceiling on one GPU type at a cluster: GPUs in use at once and GPUs per job
    (None: no limit)."""

    total: int | None
    per_job: int | None = None


NO_LIMIT = GpuLimit(None, None)


@dataclasses.dataclass(frozen=True)
class LogChunk:
    text: str
    next_offset: int
    complete: bool = False  # the job ended and nothing more will be written


# A job's uid, plus "-r<attempt>" from its first requeue on; never a path or name fragment.
DISPATCH_KEY = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}(-r[0-9]+)?$")


def dispatch_key(job) -> str:
    """The name a backend knows this submission of the job by: the uid, plus the attempt number
    when the job was requeued (a preempted job's old backend job must not be found again)."""
    key = getattr(job, "dispatch_key", None) or str(job.uid)
    if not DISPATCH_KEY.fullmatch(key):
        raise BackendError(f"{key!r} is not a dispatch key")
    return key


def job_env(job) -> dict[str, str]:
    """The environment a backend gives the job: its own variables in name order, then the
    portal's, which the job's cannot override. A task of an array also learns its index and
    its array's number."""
    env = {}
    for name, value in sorted((job.env or {}).items()):
        if not ENV_NAME.fullmatch(name):
            raise JobRejected(f"{name!r} is not a valid environment variable name")
        if not isinstance(value, str):
            raise JobRejected(f"the value of environment variable {name} is not a string")
        env[name] = value
    env["FACTORY_JOB_UID"] = str(job.uid)
    env["FACTORY_JOB_NAME"] = str(job.name)
    if getattr(job, "array_id", None) is not None:
        env["FACTORY_ARRAY_ID"] = str(int(job.array_id))
        env["FACTORY_ARRAY_INDEX"] = str(int(job.array_index))
    return env


# --- array indexes ------------------------------------------------------------------------------
# Slurm's grammar for the tasks of an array, which the portal's own `array:` field speaks too:
# "0-999", "1,3,5-7", "0-15:4" (a range with a step), each optionally followed by "%N", how many
# tasks may run at once ("0-999%50").
_INDEX_ITEM = re.compile(r"^(\d{1,9})(?:-(\d{1,9})(?::(\d{1,9}))?)?$")


class BadIndexes(ValueError):
    """An array's indexes that do not follow the grammar, or are too many."""


def count_indexes(text: str) -> int:
    """How many indexes the list names (before expanding it, so that "0-999999999" costs nothing
    to refuse). Raises BadIndexes for one that is not a list of indexes."""
    total = 0
    for item in text.split(","):
        match = _INDEX_ITEM.fullmatch(item.strip())
        if not match:
            raise BadIndexes(
                f"{item.strip()[:40]!r} is not an index, a range (0-9) or a range with a step (0-9:2)"
            )
        first, last, step = int(match[1]), int(match[2] or match[1]), int(match[3] or 1)
        if last < first:
            raise BadIndexes(f"the range {first}-{last} runs backwards")
        if step < 1:
            raise BadIndexes("a range's step is at least 1")
        total += (last - first) // step + 1
    return total


def expand_indexes(text: str, limit: int | None = None) -> list[int]:
    """The indexes a list names, in the order given ("1,3,5-7" → [1, 3, 5, 6, 7]). Raises
    BadIndexes for a malformed list, or one of more than `limit` indexes."""
    if limit is not None and count_indexes(text) > limit:
        raise BadIndexes(f"more than {limit} indexes")
    indexes: list[int] = []
    for item in text.split(","):
        match = _INDEX_ITEM.fullmatch(item.strip())
        if not match:
            raise BadIndexes(f"{item.strip()[:40]!r} is not an index or a range")
        first, last, step = int(match[1]), int(match[2] or match[1]), int(match[3] or 1)
        indexes.extend(range(first, last + 1, step))
    return indexes


def split_limit(text: str) -> tuple[str, int | None]:
    """ "0-999%50" → ("0-999", 50); "0-9" → ("0-9", None); "%4" → ("", 4)."""
    indexes, percent, limit = text.strip().partition("%")
    if not percent:
        return indexes.strip(), None
    if not limit.strip().isdigit() or len(limit.strip()) > 9:
        raise BadIndexes(f"%{limit.strip()[:20]} is not a number of tasks at once")
    return indexes.strip(), int(limit)


def index_ranges(indexes) -> str:
    """The shortest list of the grammar naming these indexes: [0, 1, 2, 5, 7, 8] → "0-2,5,7-8"."""
    ordered = sorted(set(indexes))
    parts: list[str] = []
    start = previous = None
    for index in ordered:
        if previous is not None and index == previous + 1:
            previous = index
            continue
        if start is not None:
            parts.append(str(start) if start == previous else f"{start}-{previous}")
        start = previous = index
    if start is not None:
        parts.append(str(start) if start == previous else f"{start}-{previous}")
    return ",".join(parts)


def job_secrets(job) -> dict[str, str]:
    """The job's secrets in the clear, for the backend to deliver to the job only: never into a
    script, a command line, an event or a log."""
    reveal = getattr(job, "secret_values", None)
    secrets = reveal() if reveal is not None else {}
    for name, value in secrets.items():
        if not ENV_NAME.fullmatch(name) or not isinstance(value, str):
            raise JobRejected(f"secret {name!r} cannot be delivered as an environment variable")
    return secrets


def split_image_name(name: str) -> tuple[str, str] | None:
    """(registry, repository path) of an image name without tag or digest, with Docker's
    defaults spelled out ("busybox" is docker.io's "library/busybox"), or None if it is not one.
    The first component is a registry when it has a dot, a port or capitals, or is localhost."""
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        domain, path = first, rest
    else:
        domain, path = DEFAULT_REGISTRY, name
    if domain in DEFAULT_REGISTRY_ALIASES:
        domain = DEFAULT_REGISTRY
    if domain == DEFAULT_REGISTRY and "/" not in path:
        path = f"library/{path}"
    if not (_IMAGE_DOMAIN.fullmatch(domain) and _IMAGE_PATH.fullmatch(path)):
        return None
    return domain, path


def normalise_image(image: str) -> str | None:
    """The image reference with its registry and repository spelled out
    ("busybox:1.36" is "docker.io/library/busybox:1.36"), or None when it is not a valid reference.
    Checked and sent in this form, so that no runtime's own search list of registries can resolve
    a short name to an image other than the one that was checked."""
    if not isinstance(image, str) or not 0 < len(image) <= IMAGE_MAX_LENGTH or not image.isascii():
        return None
    rest, at, digest = image.partition("@")
    if at and not _IMAGE_DIGEST.fullmatch(digest):
        return None
    name, tag = rest, ""
    last_colon, last_slash = rest.rfind(":"), rest.rfind("/")
    if last_colon > last_slash:
        name, tag = rest[:last_colon], rest[last_colon + 1 :]
        if not _IMAGE_TAG.fullmatch(tag):
            return None
    parts = split_image_name(name)
    if parts is None:
        return None
    full = "/".join(parts)
    if len(full) > IMAGE_NAME_MAX_LENGTH:
        return None
    return full + (f":{tag}" if tag else "") + (f"@{digest}" if at else "")


def valid_image_prefix(prefix: str) -> bool:
    """Whether an allow-list entry names a registry, or a path within one, explicitly:
    "nvcr.io/", "nvcr.io/nvidia/", "docker.io/library/busybox" (Docker Hub's official images are
    under docker.io/library/). Nothing is implied, so what is written is what is matched."""
    if not isinstance(prefix, str) or not prefix.isascii() or len(prefix) > IMAGE_NAME_MAX_LENGTH:
        return False
    domain, _, path = prefix.removesuffix("/").partition("/")
    explicit = "." in domain or ":" in domain or domain == "localhost"
    return (
        explicit
        and domain not in DEFAULT_REGISTRY_ALIASES  # images are matched as docker.io/...
        and bool(_IMAGE_DOMAIN.fullmatch(domain))
        and (not path or bool(_IMAGE_PATH.fullmatch(path)))
    )


def image_prefix_matches(prefix: str, image: str) -> bool:
    """Whether a normalised image lies under an allow-list prefix ("nvcr.io/nvidia/", or a whole
    repository "docker.io/library/busybox"). Prefixes end at a path boundary: "ghcr.io/lab" does
    not admit "ghcr.io/lab-evil/x"."""
    if not image.startswith(prefix):
        return False
    return prefix.endswith("/") or image[len(prefix) : len(prefix) + 1] in ("", "/", ":", "@")


@dataclasses.dataclass(frozen=True)
class ImageRule:
    """Which container images a cluster runs jobs in: a plain value, so that submission checks
    can cache it. Backends that run no containers (containers=False) ignore the image."""

    cluster: str
    containers: bool = False
    allowed: tuple[str, ...] | None = None  # registry prefixes; None: any image

    def refusal(self, image: str) -> str:
        """Why the cluster would not run a job in this image; "" if it would."""
        if not self.containers:
            return ""
        if not image:
            return f"a container image is required to run on {self.cluster}"
        name = normalise_image(image)
        if name is None:
            return "not a valid container image reference"
        if self.allowed is None or any(image_prefix_matches(p, name) for p in self.allowed):
            return ""
        if not self.allowed:
            return (
                f"{self.cluster} runs no container images until an administrator sets its connection "
                "setting 'allowed_images' (registry prefixes) or 'allow_any_image': true"
            )
        return f"{self.cluster} runs only images from {', '.join(self.allowed)}"


def read_log_file(path: Path, offset: int, *, finished: bool) -> LogChunk:
    """Up to LOG_CHUNK_BYTES of a log file from a byte offset, never splitting a UTF-8 character.
    `finished` says the writer is done, so reaching the end means the log is complete."""
    offset = max(offset, 0)
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read(LOG_CHUNK_BYTES)
    except FileNotFoundError:
        data = b""
    return log_chunk(data, offset, finished=finished)


def log_chunk(data: bytes, offset: int, *, finished: bool, whole: bool = False) -> LogChunk:
    """The chunk of a log at `offset` made of `data`, the log's bytes from there on: up to
    LOG_CHUNK_BYTES of them, never splitting a UTF-8 character. `whole` says `data` runs to the
    end of the log; otherwise it may be a read cut off at LOG_CHUNK_BYTES, and a full chunk
    cannot be known to be the last."""
    chunk = data[:LOG_CHUNK_BYTES]
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    text = decoder.decode(chunk, final=False)
    used = len(chunk) - len(decoder.getstate()[0])
    complete = finished and used == len(data) and (whole or used < LOG_CHUNK_BYTES)
    return LogChunk(text=text, next_offset=offset + used, complete=complete)


def slice_log(log: bytes, offset: int, *, finished: bool) -> LogChunk:
    """The chunk at `offset` of a log held whole, for backends that answer with all of it."""
    return log_chunk(log[offset:], offset, finished=finished, whole=True)


@dataclasses.dataclass(frozen=True)
class PoolHealth:
    gpu_type: str  # the key of the pool it describes (Adapter.health_key)
    capacity: int
    in_use: int
    # Its node shape: how many nodes have these GPUs, and the largest one's GPUs, CPUs and
    # memory (None: the backend does not say).
    nodes: int | None = None
    gpus_per_node: int | None = None
    cpus_per_node: int | None = None
    memory_mb_per_node: int | None = None
    # Where the site describes its topology: what a domain is ("switch", "block", a node label)
    # and the pool's nodes by the domain they share ({domain: node names}). None: the backend did
    # not say this time, and the pool keeps the topology it had.
    topology_level: str | None = ""
    domains: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Health:
    ok: bool
    message: str = ""
    pools: tuple[PoolHealth, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """As kept on the cluster and shown: each pool's domains as how many nodes each has."""
        data = dataclasses.asdict(self)
        for pool in data["pools"]:
            pool["domains"] = {name: len(nodes) for name, nodes in sorted(pool["domains"].items())}
        return data


@dataclasses.dataclass(frozen=True)
class DrainTarget:
    """Hardware the portal takes out of service: a node as its backend names it, and the indexes
    of its GPUs of one type that failed (a backend that drains whole nodes drains the node)."""

    node: str
    gpu_type: str
    gpus: tuple[int, ...] = ()


# The reason a drain made by the portal starts with. Like LBNL NHC's "NHC:", it marks what the
# portal may resume: a drain with any other reason is an operator's, and is never undone here.
DRAIN_REASON_PREFIX = "factory:"


class Adapter:
    """One cluster's backend. Subclasses set `kind` and `connection_class` and implement the verbs."""

    kind: ClassVar[str]
    connection_class: ClassVar[type[Connection]]
    _pools: dict[int, Any] | None = None

    def __init__(self, cluster) -> None:
        self.cluster = cluster
        self.connection = self.parse_connection(cluster.connection or {})

    @classmethod
    def parse_connection(cls, data: dict[str, Any]) -> Connection:
        return cls.connection_class.parse(data)

    def pool_for(self, job):
        """The cluster's pool of the job's GPU type, or None. The pools are read once per adapter:
        an adapter serves one task (a batch of dispatches) or one sync."""
        if self._pools is None:
            self._pools = {pool.gpu_type_id: pool for pool in self.cluster.pools.all()}
        return self._pools.get(job.gpu_type.pk)

    def health_key(self, pool) -> str:
        """Which of health()'s pools describes this pool (PoolHealth.gpu_type)."""
        return pool.gpu_type.slug

    def submit(self, job) -> str:
        """Start the job and return its external id. Must find, not duplicate, a job already
        submitted under the same uid (a retried dispatch)."""
        raise NotImplementedError

    def find(self, job) -> str | None:
        """The external id of this attempt if the backend already has it (by its dispatch key),
        else None; never submits."""
        raise NotImplementedError

    def statuses(self, jobs: Iterable) -> dict[str, StatusReport]:
        """Reports for all the given jobs, keyed by external id, from as few backend calls as possible."""
        raise NotImplementedError

    def cancel(self, job) -> None:
        raise NotImplementedError

    # Whether the backend has arrays of its own (Slurm's job arrays): the first attempts of an
    # array's tasks then reach it as one backend job (submit_array), and are stopped together
    # (cancel_array). Elsewhere each task is submitted, synced and cancelled as a job.
    native_arrays: ClassVar[bool] = False

    def runs_as_array(self, array) -> bool:
        """Whether the backend can hold this array (duck-typed: uid, name, indexes, max_running,
        external_id) as one of its own arrays."""
        return False

    def submit_array(self, array, tasks, members) -> tuple[str, dict[int, str]]:
        """Hand `tasks` (first attempts of tasks of `array`) to the backend as part of one backend
        array, exactly once in effect: a backend array already made for it (found by the array's
        uid) is used, never made again. `members()` gives every task of the array that may still
        run, in index order: the backend array is made of them all, those not in `tasks` held
        there until they are handed over too. Returns the backend's id of the array and
        {task pk: the task's external id}."""
        raise NotImplementedError

    def cancel_array(self, array, *, waiting_only: bool = False) -> None:
        """Stop the backend array `array.external_id`: all its tasks, or (`waiting_only`) only
        those still waiting there (held tasks whose portal jobs ended before they were handed
        over)."""
        raise NotImplementedError

    def logs(self, job, offset: int = 0, rank: int = 0) -> LogChunk:
        """The job's log from a byte offset; of a gang, the log of node `rank` (0 by default)."""
        raise NotImplementedError

    def full_log(self, job, rank: int = 0) -> Iterator[str]:
        """The whole log, piece by piece, for a download. Backends that read a log from a byte
        offset cheaply go chunk by chunk; those that can only fetch all of it override this to
        fetch it once (not once per chunk)."""
        offset = 0
        while (chunk := self.logs(job, offset, rank)).text:
            yield chunk.text
            offset = chunk.next_offset

    def health(self) -> Health:
        raise NotImplementedError

    @property
    def image_rule(self) -> ImageRule:
        """The container images this cluster runs jobs in; by default it runs no containers."""
        return ImageRule(self.cluster.slug)

    # Whether the backend can hold tenants to GPU limits of its own (apply_tenant_limits).
    keeps_tenant_limits: ClassVar[bool] = False
    # Whether submit() delivers the job's secrets (job_secrets) to it; a job with secrets is never
    # run without them on a backend that cannot.
    delivers_secrets: ClassVar[bool] = False

    # Whether drain() takes the whole node out (Slurm, Kubernetes) or just the GPUs named (local).
    drains_whole_node: ClassVar[bool] = True

    def drain(self, target: DrainTarget, reason: str) -> None:
        """Stop the backend placing jobs on the target; `reason` starts with DRAIN_REASON_PREFIX."""
        raise NotImplementedError

    def resume(self, target: DrainTarget) -> bool:
        """Undo a drain the portal made; leave alone one whose reason is not the portal's.
        Returns whether the target is in service again."""
        raise NotImplementedError

    def gpu_jobs(self) -> dict[tuple[str, int], str]:
        """{(node, GPU index): the external id of the job on it} as the backend itself knows it,
        for samples that do not say (no `hpc_job` or `pod` label); {} where it cannot tell."""
        return {}

    def apply_tenant_limits(self, limits: dict[str, dict[str, GpuLimit]]) -> list[str]:
        """Make the backend itself hold each tenant to its GPU ceilings, {tenant slug: {GPU type
        slug: GpuLimit}}, for jobs that reach it without the portal. Returns the tenants whose
        limits changed."""
        raise NotImplementedError
