"""Organisations → departments → projects: the tenant tree that `Tenant.parent` draws.

A tenant at the top of a tree is an organisation (and its billing account); the tenants just below
it are its departments; the tenants below those are projects (any depth the data has). What the
tree means elsewhere:
- scoping (factory.querysets): an admin of a tenant administers every tenant below it;
- quotas: a tenant's nominal GPUs bound the sum of its children's, and admission lends idle GPUs
  within the tree first (quotas.hierarchy);
- budgets: a tenant's budget caps what its whole subtree spends;
- chargeback: rows group by department and cost center (billing.reports).

The tree is small (one row per tenant) and read whole, in one query, wherever it is needed. A
cycle is refused by `parent_problems` (forms, the API, the admin, platform files) and, on
PostgreSQL, by a trigger that checks every change of a parent under `HIERARCHY_LOCK`, so that two
moves at once cannot close a loop between them.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Iterable, Iterator

from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import ProtectedError

# pg_advisory_xact_lock's key for changes to the tree and to what nests along it (quotas): "tree".
HIERARCHY_LOCK = 0x74726565


def hierarchy_lock() -> None:
    """Serialise changes of the tree and of nested quotas for the rest of the transaction; the
    checks made after it see every change committed before. SQLite serialises writers itself."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [HIERARCHY_LOCK])


@dataclasses.dataclass
class TenantTree:
    """Tenants by id with their parents, and what follows from them."""

    parents: dict[int, int | None]
    children: dict[int, list[int]] = dataclasses.field(default_factory=lambda: defaultdict(list))

    def __post_init__(self) -> None:
        for pk, parent in self.parents.items():
            if parent is not None:
                self.children[parent].append(pk)
        self._paths: dict[int, tuple[int, ...]] = {}

    @classmethod
    def load(cls) -> TenantTree:
        from .models import Tenant

        return cls(dict(Tenant.objects.values_list("pk", "parent_id")))

    def __contains__(self, pk: int) -> bool:
        return pk in self.parents

    def path(self, pk: int) -> tuple[int, ...]:
        """The tenant and its ancestors, nearest first, up to the top of its tree."""
        found = self._paths.get(pk)
        if found is None:
            path, seen = [pk], {pk}
            parent = self.parents.get(pk)
            while parent is not None and parent in self.parents and parent not in seen:
                path.append(parent)
                seen.add(parent)
                parent = self.parents[parent]
            found = self._paths[pk] = tuple(path)
        return found

    def ancestors(self, pk: int) -> tuple[int, ...]:
        return self.path(pk)[1:]

    def depth(self, pk: int) -> int:
        return len(self.path(pk)) - 1

    def root(self, pk: int) -> int:
        return self.path(pk)[-1]

    def department(self, pk: int) -> int:
        """The department a tenant belongs to: its ancestor just below the organisation (a
        department is its own; an organisation, with nothing above it, is its own too)."""
        path = self.path(pk)
        return path[-2] if len(path) > 1 else path[0]

    def descendants(self, pk: int) -> list[int]:
        """Every tenant below this one (not itself), parents before their children."""
        found, stack, seen = [], list(reversed(self.children.get(pk, []))), {pk}
        while stack:
            child = stack.pop()
            if child in seen:
                continue
            seen.add(child)
            found.append(child)
            stack.extend(reversed(self.children.get(child, [])))
        return found

    def subtree(self, pk: int) -> list[int]:
        return [pk, *self.descendants(pk)]

    def roots(self) -> list[int]:
        return [pk for pk in self.parents if self.root(pk) == pk]

    def walk(self, order: dict[int, str] | None = None) -> Iterator[tuple[int, int]]:
        """(tenant id, depth) of every tenant, each tree from the top, parents before their
        children, siblings by `order` (e.g. slugs)."""

        def key(pk: int):
            return order.get(pk, "") if order else pk

        for top in sorted(self.roots(), key=key):
            stack = [(top, 0)]
            while stack:
                pk, depth = stack.pop()
                yield pk, depth
                stack.extend((c, depth + 1) for c in sorted(self.children.get(pk, []), key=key, reverse=True))

    def roll_up(self, values: dict[int, object]) -> dict[int, object]:
        """Each tenant's value summed over its subtree (itself and everything below it)."""
        totals: dict[int, object] = {}
        for pk, value in values.items():
            for above in self.path(pk) if pk in self.parents else (pk,):
                totals[above] = totals[above] + value if above in totals else value
        return totals

    def would_cycle(self, pk: int, parent: int | None) -> bool:
        return parent is not None and pk in self.path(parent)


def parent_problems(tenant, parent) -> list[str]:
    """Why `tenant` may not be placed below `parent` (None: at the top); empty when it may. A
    tenant is never its own ancestor; the apps above say what else a move would break (a
    department's quota that its projects would outgrow), through `factory.signals.tenant_moving`."""
    from .signals import tenant_moving

    if tenant.pk is None or getattr(parent, "pk", None) == _stored_parent(tenant):
        return []
    if parent is not None and TenantTree.load().would_cycle(tenant.pk, parent.pk):
        if parent.pk == tenant.pk:
            return ["A tenant cannot be its own parent: a tenant cannot be its own ancestor."]
        return [
            f"{parent} is below {tenant}, so {tenant} cannot go below it: "
            "a tenant cannot be its own ancestor."
        ]
    problems = []
    for _receiver, answer in tenant_moving.send(sender=type(tenant), tenant=tenant, parent=parent):
        problems += answer or []
    return problems


def _stored_parent(tenant) -> int | None:
    return type(tenant).objects.filter(pk=tenant.pk).values_list("parent_id", flat=True).first()


def check_parent(tenant, parent, field: str = "parent") -> None:
    problems = parent_problems(tenant, parent)
    if problems:
        raise ValidationError({field: problems})


def move(tenant, parent) -> None:
    """Place `tenant` below `parent` (None: at the top), checked under the hierarchy lock."""
    with transaction.atomic():
        hierarchy_lock()
        check_parent(tenant, parent)
        type(tenant).objects.filter(pk=tenant.pk).update(parent=parent)
        tenant.parent = parent


def deletion_problems(tenant) -> list[str]:
    """What keeps a tenant from being deleted: tenants below it, and what the apps still need of
    it (jobs, ledger lines, reservations: factory.signals.deletion_blockers)."""
    from .signals import blockers

    reasons = []
    children = tenant.children.count()
    if children:
        reasons.append(f"{children} tenant{'s' if children != 1 else ''} below it")
    reasons += blockers(type(tenant), [tenant.pk]).get(tenant.pk, [])
    return reasons


def delete(tenant) -> None:
    """Delete a tenant with nothing below it and nothing that names it; ValidationError saying
    what is in the way otherwise (its memberships, quotas and budget go with it)."""
    with transaction.atomic():
        hierarchy_lock()
        reasons = deletion_problems(tenant)
        if reasons:
            raise ValidationError(f"{tenant} still has {', '.join(reasons)}; it cannot be deleted.")
        try:
            with transaction.atomic():
                tenant.delete()
        except ProtectedError as exc:  # what no app counts among its blockers (a billing account)
            names = sorted({str(obj._meta.verbose_name) for obj in exc.protected_objects})
            raise ValidationError(
                f"{tenant} still has a {', a '.join(names)}; it cannot be deleted."
            ) from None


def ordered(tenants: Iterable) -> list[tuple[object, int]]:
    """(tenant, depth) for these tenants in tree order; a tenant whose parent is not among them is
    shown at the top."""
    by_pk = {t.pk: t for t in tenants}
    tree = TenantTree({pk: (t.parent_id if t.parent_id in by_pk else None) for pk, t in by_pk.items()})
    return [(by_pk[pk], depth) for pk, depth in tree.walk({pk: t.slug for pk, t in by_pk.items()})]
