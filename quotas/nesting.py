"""Quotas nest along the tenant tree, as Kueue's cohorts do: a tenant's nominal GPUs of a type
bound the sum of the nominal GPUs of the tenants just below it (a department's, its projects').

"Just below" skips tenants without a quota of that GPU type: such a tenant is no bound of its own,
and the tenants under it count towards the next tenant above that has one. A change is refused
when it makes an overrun appear or grow (quota forms, the API, the tenant tree, platform files);
one that leaves an overrun the data already had as it was, or shrinks it, goes through.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable

from django.core.exceptions import ValidationError

from factory.hierarchy import TenantTree

from .models import Quota

# {tenant: (its nominal, the sum of the nominals just below it)}, where the sum is the larger.
Overruns = dict[Hashable, tuple[int, int]]


def _nearest_above(tree: TenantTree, nominals: dict, tenant):
    if tenant not in tree:
        return None
    return next((a for a in tree.ancestors(tenant) if a in nominals), None)


def just_below(tree: TenantTree, nominals: dict[Hashable, int], tenant) -> list:
    """The tenants with a quota whose nominal counts towards `tenant`'s bound."""
    return [t for t in nominals if _nearest_above(tree, nominals, t) == tenant]


def overruns(tree: TenantTree, nominals: dict[Hashable, int]) -> Overruns:
    """For one GPU type (`nominals`: by tenant, those with a quota), the tenants whose nominal
    is below the sum of their children's."""
    below: dict[Hashable, int] = defaultdict(int)
    for tenant, nominal in nominals.items():
        above = _nearest_above(tree, nominals, tenant)
        if above is not None:
            below[above] += nominal
    return {a: (nominals[a], total) for a, total in below.items() if total > nominals[a]}


def worsened(before: Overruns, after: Overruns) -> Overruns:
    """The overruns of `after` that `before` did not have, or had smaller."""
    return {
        tenant: (nominal, total)
        for tenant, (nominal, total) in after.items()
        if tenant not in before or total - nominal > before[tenant][1] - before[tenant][0]
    }


def message(tenant: str, nominal: int, total: int, gpu_type: str, changed: str | None = None) -> str:
    """What is wrong, said of the tenant changed (`changed`) or of the tenant it overruns."""
    if changed is None or changed == tenant:
        return (
            f"{tenant} would have {nominal} {gpu_type} GPUs, below the {total} that the tenants under "
            "it have together: a department's nominal quota bounds the sum of its projects'."
        )
    return (
        f"{tenant} has {nominal} {gpu_type} GPUs; the tenants under it, {changed} among them, would "
        f"have {total} together: a department's nominal quota bounds the sum of its projects'."
    )


def _nominals(gpu_type_id: int) -> dict[int, int]:
    return dict(Quota.objects.filter(gpu_type_id=gpu_type_id).values_list("tenant_id", "nominal"))


def _slugs(ids) -> dict[int, str]:
    from factory.models import Tenant

    return dict(Tenant.objects.filter(pk__in=list(ids)).values_list("pk", "slug"))


def check_quota(quota: Quota, *, deleting: bool = False) -> None:
    """ValidationError on `nominal` when saving (or deleting) this quota would let a department's
    projects outgrow it."""
    if quota.tenant_id is None or quota.gpu_type_id is None or quota.nominal is None:
        return
    tree = TenantTree.load()
    before = _nominals(quota.gpu_type_id)
    after = dict(before)
    if deleting:
        after.pop(quota.tenant_id, None)
    else:
        after[quota.tenant_id] = quota.nominal
    found = worsened(overruns(tree, before), overruns(tree, after))
    if found:
        slugs = _slugs([*found, quota.tenant_id])
        gpu, changed = quota.gpu_type.slug, slugs[quota.tenant_id]
        raise ValidationError(
            {"nominal": [message(slugs[t], n, total, gpu, changed) for t, (n, total) in found.items()]}
        )


def move_problems(tenant, parent) -> list[str]:
    """What placing `tenant` below `parent` would make its new ancestors' quotas overrun."""
    from factory.models import GpuType

    tree = TenantTree.load()
    moved = TenantTree({**tree.parents, tenant.pk: getattr(parent, "pk", None)})
    subtree = set(tree.subtree(tenant.pk))
    problems = []
    gpu_types = Quota.objects.filter(tenant_id__in=subtree).values_list("gpu_type_id", flat=True).distinct()
    for gpu_type_id in gpu_types:
        nominals = _nominals(gpu_type_id)
        found = worsened(overruns(tree, nominals), overruns(moved, nominals))
        if found:
            slugs, gpu = _slugs(found), GpuType.objects.get(pk=gpu_type_id).slug
            problems += [message(slugs[t], n, total, gpu, tenant.slug) for t, (n, total) in found.items()]
    return problems
