"""Creating a job: the one path the form and the API both take."""

from __future__ import annotations

import hashlib
import json

from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from factory import sealing
from factory.adapters import ImageRule
from factory.adapters.base import normalise_image
from factory.choices import POSIX_USER_KINDS, ClusterKind
from factory.models import GpuType, Identity, Pool, Tenant

from . import dependencies, signals
from .choices import EventKind
from .models import Job

POOL_CACHE_SECONDS = 10


def placeable_pools(gpu_type: GpuType) -> list[tuple[str, str, int]]:
    """(cluster kind, region, capacity) of each pool of this type on a cluster that accepts jobs
    (cached briefly: read on every submission, changed when an admin edits a cluster)."""
    key = f"jobs:placeable-pools:{gpu_type.pk}"
    pools = cache.get(key)
    if pools is None:
        pools = list(
            Pool.objects.filter(
                gpu_type=gpu_type, cluster__enabled=True, cluster__draining=False
            ).values_list("cluster__kind", "cluster__region", "capacity")
        )
        cache.set(key, pools, POOL_CACHE_SECONDS)
    return pools


def largest_pool(gpu_type: GpuType) -> int:
    """The most GPUs of this type any single cluster that accepts jobs can give one job."""
    return max((capacity for _, _, capacity in placeable_pools(gpu_type)), default=0)


def image_rules(gpu_type: GpuType) -> list[tuple[int, ImageRule]]:
    """(capacity, which images it runs) of each pool of this GPU type on a cluster that accepts
    jobs (cached briefly, like the placeable pools). A cluster whose connection settings no longer
    parse runs nothing and is left out."""
    key = f"jobs:image-rules:{gpu_type.pk}"
    rules = cache.get(key)
    if rules is None:
        rules = []
        pools = Pool.objects.filter(gpu_type=gpu_type, cluster__enabled=True, cluster__draining=False)
        for pool in pools.select_related("cluster").order_by("cluster__slug"):
            try:
                rules.append((pool.capacity, pool.cluster.adapter().image_rule))
            except ValueError:
                continue
        cache.set(key, rules, POOL_CACHE_SECONDS)
    return rules


def forget_pool_caches(sender=None, **kwargs) -> None:
    """A pool or cluster changed: the cached pools and image rules may be wrong."""
    pks = GpuType.objects.values_list("pk", flat=True)
    cache.delete_many([f"jobs:{what}:{pk}" for pk in pks for what in ("placeable-pools", "image-rules")])


def check_gpu_request(gpu_type: GpuType, gpu_count: int) -> None:
    """Raise ValidationError({"gpu_count": ...}) for a request no cluster could ever run."""
    if gpu_count is None or gpu_count < 1:
        raise ValidationError({"gpu_count": "Ask for at least one GPU."})
    most = largest_pool(gpu_type)
    if most == 0:
        raise ValidationError({"gpu_type": f"No cluster accepting jobs has {gpu_type} GPUs."})
    if gpu_count > most:
        raise ValidationError(
            {"gpu_count": f"At most {most} {gpu_type} GPUs fit on one cluster; you asked for {gpu_count}."}
        )


def check_image(gpu_type: GpuType, gpu_count: int, image: str) -> None:
    """Raise ValidationError({"image": ...}) when no cluster that could run the job runs its
    image (a Kubernetes cluster runs only images from its allow-list; backends that run no
    containers ignore the image). The clusters' reasons say what would be accepted."""
    if image and normalise_image(image) is None:
        return  # not an image reference at all: the field's own validator says so
    rules = [rule for capacity, rule in image_rules(gpu_type) if capacity >= gpu_count]
    refusals = [rule.refusal(image or "") for rule in rules]
    if refusals and all(refusals):
        reasons = "; ".join(dict.fromkeys(refusals))
        raise ValidationError({"image": f"No cluster that could run this job runs this image: {reasons}."})


def check_owner_identity(owner, tenant: Tenant, gpu_type: GpuType, gpu_count: int) -> None:
    """Raise ValidationError({"gpu_type": ...}) when every cluster that could run the job runs jobs
    as their owner's POSIX account (Slurm) and the owner has none. Admission picks the cluster
    later, so a job that some other cluster could run is accepted; should admission still place
    it on such a cluster, its dispatch rejects it with the same reason."""
    kinds = {
        kind
        for kind, region, capacity in placeable_pools(gpu_type)
        if capacity >= gpu_count and (not tenant.regions or region in tenant.regions)
    }
    if not kinds or not kinds <= POSIX_USER_KINDS or Identity.objects.posix_username(owner.pk):
        return
    names = " and ".join(sorted(ClusterKind(kind).label for kind in kinds))
    raise ValidationError(
        {
            "gpu_type": f"Only {names} clusters can run this job, and they run each job as its owner's "
            "own POSIX account; none is set for you yet. Ask a platform admin to set yours."
        }
    )


def fingerprint(spec: dict) -> str:
    canonical = json.dumps(spec, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class IdempotencyConflict(Exception):
    """The key was used before for a different request."""


def submit(*, tenant: Tenant, owner, spec: dict, idempotency_key: str = "") -> tuple[Job, bool]:
    """Create a pending job and announce it on commit. Returns (job, created).

    With an idempotency key, a repeat of the same request returns the first job; the unique
    constraint settles a race between two identical requests.
    """
    spec = dict(spec)
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
    }
    digest = fingerprint({"tenant": tenant.slug, **asked}) if idempotency_key else ""
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
