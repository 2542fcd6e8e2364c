"""Quotas mirrored into the clusters' own limits (Slurm: GrpTRES and MaxTRESPerJob per tenant
account; Kubernetes: a ResourceQuota on requests.nvidia.com/gpu per tenant namespace), so that a
cluster holds a tenant to its ceiling even for jobs that reach it without the portal, such as a
researcher's own sbatch under the tenant's account or kubectl in the tenant's namespace.

A tenant's ceiling on a GPU type is what admission could ever give it: nominal plus its borrowing
limit (no borrowing limit: no ceiling), and max_gpus_per_job per job. A GPU type it has no quota
for is a ceiling of 0, as in admission. The portal's own admission stays the first line: it never
admits past these ceilings, so mirroring them never holds back a job the portal dispatched.
"""

from __future__ import annotations

import logging

from factory.adapters import BackendError, GpuLimit
from factory.models import Cluster, Tenant

from .models import Quota

log = logging.getLogger(__name__)


def ceiling(quota: Quota | None) -> GpuLimit:
    if quota is None:
        return GpuLimit(0, None)
    total = None if quota.borrowing_limit is None else quota.nominal + quota.borrowing_limit
    return GpuLimit(total, quota.max_gpus_per_job)


def limits_for(tenants: list[Tenant], gpu_types: list) -> dict[str, dict[str, GpuLimit]]:
    """{tenant slug: {GPU type slug: GpuLimit}} for the given tenants and GPU types."""
    quotas = {
        (q.tenant_id, q.gpu_type_id): q
        for q in Quota.objects.filter(tenant__in=tenants, gpu_type__in=gpu_types)
    }
    return {
        tenant.slug: {gpu_type.slug: ceiling(quotas.get((tenant.pk, gpu_type.pk))) for gpu_type in gpu_types}
        for tenant in tenants
    }


def mirror(tenant_ids: list[int] | None = None) -> dict[str, list[str]]:
    """Apply the tenants' ceilings (all tenants by default) to every enabled cluster that keeps
    limits of its own. Returns {cluster slug: tenants whose limits changed}. A cluster that cannot
    be reached is skipped: the periodic pass tries again."""
    changed: dict[str, list[str]] = {}
    for cluster in keeping_limits():
        tenants_changed = mirror_cluster(cluster, tenant_ids)
        if tenants_changed:
            changed[cluster.slug] = tenants_changed
    return changed


def keeping_limits() -> list[Cluster]:
    """The enabled clusters that keep tenant limits of their own."""
    clusters = Cluster.objects.filter(enabled=True).prefetch_related("pools__gpu_type")
    return [cluster for cluster in clusters if cluster.adapter().keeps_tenant_limits]


def mirror_cluster(cluster: Cluster, tenant_ids: list[int] | None = None) -> list[str]:
    """Apply the tenants' ceilings to one cluster; the slugs of the tenants whose limits changed
    (none when it cannot be reached)."""
    tenants = list(
        Tenant.objects.filter(pk__in=tenant_ids) if tenant_ids is not None else Tenant.objects.all()
    )
    gpu_types = [pool.gpu_type for pool in cluster.pools.all()]
    try:
        return cluster.adapter().apply_tenant_limits(limits_for(tenants, gpu_types))
    except BackendError as exc:
        log.warning("GPU limits of %s not mirrored: %s", cluster, exc)
        return []
