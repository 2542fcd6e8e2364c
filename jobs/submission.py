"""Creating a job: the one path the form and the API both take."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import uuid

from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from factory import sealing
from factory.adapters import ImageRule
from factory.adapters.base import normalise_image
from factory.choices import GANG_KINDS, POSIX_USER_KINDS, ClusterKind
from factory.models import GpuType, Identity, Pool, Tenant
from factory.shapes import NodeShape

from . import dependencies, signals
from .arrays import ArrayRequest
from .choices import EventKind, JobState
from .models import Job, JobArray, JobEvent

POOL_CACHE_SECONDS = 10


@dataclasses.dataclass(frozen=True)
class Placeable:
    """A pool of some GPU type on a cluster that accepts jobs, as submission checks see it."""

    cluster: str
    kind: str
    region: str
    shape: NodeShape

    @property
    def gangs(self) -> bool:
        return self.kind in GANG_KINDS


def placeable_pools(gpu_type: GpuType) -> list[Placeable]:
    """Each pool of this type on a cluster that accepts jobs, with its node shape (cached
    briefly: read on every submission, changed when an admin edits a cluster or its backend
    reports a new shape)."""
    key = f"jobs:placeable-pools:{gpu_type.pk}"
    pools = cache.get(key)
    if pools is None:
        rows = Pool.objects.filter(
            gpu_type=gpu_type, cluster__enabled=True, cluster__draining=False
        ).select_related("cluster")
        pools = [
            Placeable(pool.cluster.slug, pool.cluster.kind, pool.cluster.region, pool.shape())
            for pool in rows.order_by("cluster__slug")
        ]
        cache.set(key, pools, POOL_CACHE_SECONDS)
    return pools


def image_rules(gpu_type: GpuType) -> dict[str, ImageRule]:
    """{cluster: which images it runs} for each pool of this GPU type on a cluster that accepts
    jobs (cached briefly, like the placeable pools). A cluster whose connection settings no longer
    parse runs nothing and is left out."""
    key = f"jobs:image-rules:{gpu_type.pk}"
    rules = cache.get(key)
    if rules is None:
        rules = {}
        pools = Pool.objects.filter(gpu_type=gpu_type, cluster__enabled=True, cluster__draining=False)
        for pool in pools.select_related("cluster").order_by("cluster__slug"):
            try:
                rules[pool.cluster.slug] = pool.cluster.adapter().image_rule
            except ValueError:
                continue
        cache.set(key, rules, POOL_CACHE_SECONDS)
    return rules


def forget_pool_caches(sender=None, **kwargs) -> None:
    """A pool or cluster changed: the cached pools and image rules may be wrong."""
    pks = GpuType.objects.values_list("pk", flat=True)
    cache.delete_many([f"jobs:{what}:{pk}" for pk in pks for what in ("placeable-pools", "image-rules")])


def gang_shape(data: dict) -> dict[str, int]:
    """`nodes`, `gpus_per_node` and `gpu_count` (all the job's GPUs) from what a request gave:
    `gpu_count` alone is a one-node job, as it always was; a job on several nodes gives
    `nodes` and `gpus_per_node` (and `gpu_count` only if it is their product).
    Raises ValidationError({field: ...}) for a request that does not say it unambiguously."""
    nodes = data.get("nodes") or 1
    per_node, total = data.get("gpus_per_node"), data.get("gpu_count")
    if nodes < 1:
        raise ValidationError({"nodes": "Ask for at least one node."})
    if per_node is None:
        if total is None:
            raise ValidationError({"gpu_count": "Say how many GPUs the job needs."})
        if nodes > 1:
            raise ValidationError(
                {"gpus_per_node": "A job on several nodes needs gpus_per_node (gpu_count is for one node)."}
            )
        per_node = total
    elif total is not None and total != nodes * per_node:
        raise ValidationError(
            {
                "gpu_count": f"{nodes} node(s) × {per_node} GPUs per node is {nodes * per_node} GPUs, "
                f"not {total}; leave gpu_count out of a job on several nodes."
            }
        )
    if per_node < 1:
        raise ValidationError({"gpus_per_node" if nodes > 1 else "gpu_count": "Ask for at least one GPU."})
    return {"nodes": nodes, "gpus_per_node": per_node, "gpu_count": nodes * per_node}


def fitting_pools(gpu_type: GpuType, spec: dict, tenant: Tenant | None = None) -> list[Placeable]:
    """The pools that could ever run a job of this shape (within the tenant's regions, when it is
    known, and where its owner asked it to run). Raises ValidationError with a message per field
    when there is none, saying what every pool lacks ("needs 16 GB per node; h100 nodes of
    slurm-a have 15.6 GB")."""
    pools = placeable_pools(gpu_type)
    if not pools:
        raise ValidationError({"gpu_type": f"No cluster accepting jobs has {gpu_type} GPUs."})
    if tenant is not None and tenant.regions:
        check_residency(tenant, spec)
        pools = [p for p in pools if p.region in tenant.regions]
        if not pools:
            regions = ", ".join(tenant.regions)
            message = f"No cluster accepting jobs in {tenant}'s regions ({regions}) has {gpu_type} GPUs."
            raise ValidationError({"gpu_type": message})
    pools = requested_pools(gpu_type, spec, pools)
    refused: dict[str, list[str]] = {}
    fitting = []
    for pool in pools:
        why = pool.shape.refusals(
            nodes=spec["nodes"],
            gpus_per_node=spec["gpus_per_node"],
            cpus=spec.get("cpus"),
            memory_gb=spec.get("memory_gb"),
            gangs=pool.gangs,
            gpu=str(gpu_type),
            cluster=pool.cluster,
        )
        if not why:
            fitting.append(pool)
        for field, message in why.items():
            refused.setdefault(field, []).append(message)
    if not fitting:
        raise ValidationError(
            {field: _sentence("; ".join(dict.fromkeys(messages))) for field, messages in refused.items()}
        )
    return fitting


def check_residency(tenant: Tenant, spec: dict) -> None:
    """Raise ValidationError on `cluster` or `region` for a place outside the tenant's regions."""
    regions = ", ".join(tenant.regions)
    cluster, region = spec.get("requested_cluster"), spec.get("requested_region")
    if region and region not in tenant.regions:
        raise ValidationError({"region": f"{tenant} may run jobs only in {regions}, not in {region}."})
    if cluster is not None and cluster.region not in tenant.regions:
        raise ValidationError(
            {"cluster": f"{cluster} is in region {cluster.region}; {tenant} may run jobs only in {regions}."}
        )


def requested_pools(gpu_type: GpuType, spec: dict, pools: list[Placeable]) -> list[Placeable]:
    """The pools where the owner asked the job to run (a cluster, a region, or anywhere).
    Raises ValidationError on that field when none of them accepts jobs of this GPU type."""
    cluster, region = spec.get("requested_cluster"), spec.get("requested_region")
    if cluster is not None:
        if region and cluster.region != region:
            raise ValidationError({"region": f"{cluster} is in region {cluster.region}, not in {region}."})
        pools = [p for p in pools if p.cluster == cluster.slug]
        if not pools:
            raise ValidationError({"cluster": f"{cluster} has no {gpu_type} GPUs that accept jobs now."})
    elif region:
        pools = [p for p in pools if p.region == region]
        if not pools:
            raise ValidationError(
                {"region": f"No cluster accepting jobs in region {region} has {gpu_type} GPUs."}
            )
    return pools


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + "."


def check_gpu_request(gpu_type: GpuType, spec: dict, tenant: Tenant | None = None) -> list[Placeable]:
    """Normalise the spec's shape (gang_shape, in place) and raise ValidationError({field: ...})
    for a request no cluster could ever run. Returns the pools that could."""
    spec.update(gang_shape(spec))
    return fitting_pools(gpu_type, spec, tenant)


def check_image(gpu_type: GpuType, fitting: list[Placeable], image: str) -> None:
    """Raise ValidationError({"image": ...}) when no cluster that could run the job runs its
    image (a Kubernetes cluster runs only images from its allow-list; backends that run no
    containers ignore the image). The clusters' reasons say what would be accepted."""
    if image and normalise_image(image) is None:
        return  # not an image reference at all: the field's own validator says so
    rules = image_rules(gpu_type)
    refusals = [rules[p.cluster].refusal(image or "") for p in fitting if p.cluster in rules]
    if refusals and all(refusals):
        reasons = "; ".join(dict.fromkeys(refusals))
        raise ValidationError({"image": f"No cluster that could run this job runs this image: {reasons}."})


def check_owner_identity(owner, fitting: list[Placeable]) -> None:
    """Raise ValidationError({"gpu_type": ...}) when every cluster that could run the job runs jobs
    as their owner's POSIX account (Slurm) and the owner has none. Admission picks the cluster
    later, so a job that some other cluster could run is accepted; should admission still place
    it on such a cluster, its dispatch rejects it with the same reason."""
    kinds = {pool.kind for pool in fitting}
    if not kinds or not kinds <= POSIX_USER_KINDS or Identity.objects.posix_username(owner.pk):
        return
    names = " and ".join(sorted(ClusterKind(kind).label for kind in kinds))
    raise ValidationError(
        {
            "gpu_type": f"Only {names} clusters can run this job, and they run each job as its owner's "
            "own POSIX account; none is set for you yet. Ask a platform admin to set yours."
        }
    )


def check_for_tenant(owner, tenant: Tenant, spec: dict) -> None:
    """What can be checked only once the tenant is known: that a cluster in its regions could run
    the job, and that the owner can run jobs there."""
    check_owner_identity(owner, fitting_pools(spec["gpu_type"], spec, tenant))


def fingerprint(spec: dict) -> str:
    canonical = json.dumps(spec, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class IdempotencyConflict(Exception):
    """The key was used before for a different request."""


@dataclasses.dataclass
class Request:
    """A checked job spec split into what makes the job row and what goes beside it."""

    spec: dict
    secrets: dict[str, str]
    after_ok: list[int]
    after_any: list[int]
    digest: str


def prepare(tenant: Tenant, spec: dict, idempotency_key: str, extra: dict | None = None) -> Request:
    spec = dict(spec)
    spec.pop("array", None)
    spec.update(gang_shape(spec))
    secrets = spec.pop("secrets", None) or {}
    # Checked by the callers (dependencies.check), with the form's and the API's other rules.
    after_ok, after_any = list(spec.pop("after_ok", None) or []), list(spec.pop("after_any", None) or [])
    # Secrets count in telling two requests apart, by a keyed digest: the stored fingerprint must
    # not let anyone check guesses of a secret against it.
    asked = {
        **spec,
        **({"secrets": {k: sealing.keyed_digest(v) for k, v in secrets.items()}} if secrets else {}),
        **({"after_ok": after_ok} if after_ok else {}),
        **({"after_any": after_any} if after_any else {}),
        **(extra or {}),
    }
    digest = fingerprint({"tenant": tenant.slug, **asked}) if idempotency_key else ""
    return Request(spec, secrets, after_ok, after_any, digest)


def submit(*, tenant: Tenant, owner, spec: dict, idempotency_key: str = "") -> tuple[Job, bool]:
    """Create a pending job and announce it on commit. Returns (job, created).

    With an idempotency key, a repeat of the same request returns the first job; the unique
    constraint settles a race between two identical requests.
    """
    request = prepare(tenant, spec, idempotency_key)
    spec, secrets, after_ok, after_any, digest = (
        request.spec,
        request.secrets,
        request.after_ok,
        request.after_any,
        request.digest,
    )
    # No look-up first: a first request (the common case) just inserts; a repeat trips the unique
    # constraint and finds the job it made.
    try:
        with transaction.atomic():
            job = Job(
                tenant=tenant,
                owner=owner,
                idempotency_key=idempotency_key,
                idempotency_fingerprint=digest,
                **spec,
            )
            job.seal_secrets(secrets)
            job.save(force_insert=True)
            job.record(EventKind.STATE, f"Submitted by {owner}")
            if after_ok or after_any:
                dependencies.record(job, after_ok, after_any)
            transaction.on_commit(lambda: signals.job_submitted.send_robust(Job, job_id=job.pk))
    except IntegrityError:
        if not idempotency_key:
            raise
        existing = _existing(owner, idempotency_key, digest)
        if existing is None:
            raise
        return existing, False
    return job, True


def _existing(owner, key: str, digest: str) -> Job | None:
    job = Job.objects.filter(owner=owner, idempotency_key=key).select_related("tenant", "gpu_type").first()
    if job is not None and job.idempotency_fingerprint != digest:
        raise IdempotencyConflict(key)
    return job


def submit_array(
    *, tenant: Tenant, owner, spec: dict, tasks: ArrayRequest, idempotency_key: str = ""
) -> tuple[JobArray, bool]:
    """Create an array and its tasks, pending, in one transaction: a task per index (with a
    sweep's parameters in its environment), each a job that admission counts like any other,
    with its "submitted" event. One announcement on commit starts one admission pass for them
    all. Returns (array, created); `array.job_ids` lists its tasks in index order.

    With an idempotency key, a repeat of the same request returns the first array: the key is
    kept on its first task, so the one unique constraint on jobs settles races between arrays,
    and between an array and a single job, alike."""
    request = prepare(tenant, spec, idempotency_key, tasks.as_spec())
    spec, base_env = request.spec, request.spec.pop("env", None) or {}
    now = timezone.now()
    try:
        with transaction.atomic():
            array = JobArray.objects.create(
                tenant=tenant,
                owner=owner,
                name=spec["name"],
                indexes=tasks.ranges,
                size=tasks.size,
                max_running=tasks.max_running,
                sweep=list(tasks.sweep) if tasks.sweep is not None else None,
                created_at=now,
            )
            prototype = Job(tenant=tenant, owner=owner, array=array, created_at=now, env=base_env, **spec)
            prototype.seal_secrets(request.secrets)
            prototype.idempotency_key, prototype.idempotency_fingerprint = idempotency_key, request.digest
            message = f"Submitted by {owner}: task {{index}} of array {array.pk}"
            job_ids = insert_tasks(prototype, tasks, message)
            if request.after_ok or request.after_any:
                dependencies.record_many(job_ids, request.after_ok, request.after_any)
            transaction.on_commit(lambda: signals.job_submitted.send_robust(Job, job_id=job_ids[0]))
    except IntegrityError:
        if not idempotency_key:
            raise
        existing = _existing(owner, idempotency_key, request.digest)
        if existing is None:
            raise
        if existing.array_id is None:
            raise IdempotencyConflict(idempotency_key) from None
        return JobArray.objects.select_related("tenant", "owner").get(pk=existing.array_id), False
    array.job_ids = job_ids
    return array, True


def insert_tasks(prototype: Job, tasks: ArrayRequest, message: str) -> list[int]:
    """Insert a task per index of `tasks`: `prototype`'s row with its own uid, index and (of a
    sweep) environment; only the first keeps the prototype's idempotency key, since (owner, key)
    is unique among jobs. And an event each (`message`, with their {index}). Returns their ids in
    index order.

    On PostgreSQL in one statement: INSERT ... SELECT from unnest() of the indexes (and a sweep's
    environments), the columns all tasks share bound once, each uid made by the database, and the
    events inserted from what it returned. bulk_create converts every value of every row through
    its field (some 0.8 ms per task); this costs one conversion per column."""
    if connection.vendor != "postgresql":
        return _bulk_create_tasks(prototype, tasks, message)
    meta, quote = Job._meta, connection.ops.quote_name
    varying = {"array_index": "integer[]", **({"env": "jsonb[]"} if tasks.sweep is not None else {})}
    own = {"id", "uid", "idempotency_key", "idempotency_fingerprint", *varying}
    shared = [f for f in meta.concrete_fields if f.name not in own]
    listed = ", ".join(varying)
    head, _, tail = message.partition("{index}")
    sql = (
        f"WITH made AS (INSERT INTO {quote(meta.db_table)} ({', '.join(quote(f.column) for f in shared)}, "
        f"uid, idempotency_key, idempotency_fingerprint, {listed}) "
        f"SELECT {', '.join(f'CAST(%s AS {f.db_type(connection)})' for f in shared)}, gen_random_uuid(), "
        "CASE WHEN t.n = 1 THEN %s ELSE '' END, CASE WHEN t.n = 1 THEN %s ELSE '' END, "
        f"{', '.join(f't.{name}' for name in varying)} "
        f"FROM unnest({', '.join(f'%s::{kind}' for kind in varying.values())}) WITH ORDINALITY "
        f"AS t({listed}, n) RETURNING id, array_index), "
        f"events AS (INSERT INTO {quote(JobEvent._meta.db_table)} (job_id, kind, state, message, at) "
        "SELECT id, %s, %s, %s || array_index || %s, %s FROM made) "
        "SELECT id FROM made ORDER BY array_index"
    )
    params = [f.get_db_prep_save(f.pre_save(prototype, add=True), connection) for f in shared]
    params += [prototype.idempotency_key, prototype.idempotency_fingerprint, list(tasks.indexes)]
    if tasks.sweep is not None:
        env = meta.get_field("env")
        params.append(
            [env.get_db_prep_save(tasks.env_of(i, prototype.env), connection) for i in range(tasks.size)]
        )
    params += [EventKind.STATE, JobState.PENDING, head, tail, prototype.created_at]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return [row[0] for row in cursor.fetchall()]


def _bulk_create_tasks(prototype: Job, tasks: ArrayRequest, message: str) -> list[int]:
    """The same through the ORM, for other databases (SQLite, the embedded default)."""
    made = []
    for position, index in enumerate(tasks.indexes):
        job = copy.copy(prototype)  # a fresh _state (adding, no database) comes with it
        job.uid, job.array_index, job.env = uuid.uuid4(), index, tasks.env_of(position, prototype.env)
        if position:
            job.idempotency_key = job.idempotency_fingerprint = ""
        made.append(job)
    Job.objects.bulk_create(made, batch_size=TASKS_PER_INSERT)
    JobEvent.objects.bulk_create(
        (
            JobEvent(
                job_id=job.pk,
                kind=EventKind.STATE,
                state=JobState.PENDING,
                message=message.format(index=job.array_index),
                at=prototype.created_at,
            )
            for job in made
        ),
        batch_size=TASKS_PER_INSERT,
    )
    return [job.pk for job in made]


# Rows per INSERT of an array's tasks and events on databases other than PostgreSQL.
TASKS_PER_INSERT = 2000
