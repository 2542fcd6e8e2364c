"""One GPU type's quotas as Kueue's hierarchical cohorts, along the tenant tree.

Every tenant with a quota of the GPU type is a node, and so is every tenant above one (without a
quota of its own it only groups the tenants under it); the platform is the root, holding the GPU
type's capacity. In Kueue's terms, for a node n with children c:
- its own nominal: its quota's nominal less its children's (a department's nominal bounds theirs,
  quotas.nesting), which its own jobs are guaranteed; the root's is the capacity no top-level
  quota claims;
- its subtree quota SQ(n) = own nominal + Σ (SQ(c) − G(c)): what its subtree may use without
  borrowing from above, less what the tenants under it keep for themselves;
- what it keeps for itself, G(n) = SQ(n) − lending limit (0 without a lending limit): never lent;
- its usage V(n) = its own jobs' GPUs + Σ max(0, V(c) − G(c)): what its subtree uses beyond what
  the tenants under it keep.
A node borrows from the one above it when V(n) > SQ(n); with a borrowing limit, never by more
than that limit (V(n) ≤ SQ(n) + limit); the root never lends more than it has (V ≤ SQ).

So idle GPUs are lent within a department first: a project's jobs above its own nominal use what
its siblings leave idle without the department borrowing anything, and only what the department
cannot cover goes up to the organisation and then across organisations. Admission borrows in that
order (quotas.admission), and reclaims along the same tree (`reclaim_order`).

With every tenant at the top this is exactly the flat rule it replaces: a tenant borrows what the
others lend (their idle nominal, up to their lending limits) plus the capacity no quota claims.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from factory.hierarchy import TenantTree

ROOT = 0  # the platform: no tenant has id 0


class CohortTree:
    def __init__(self, tree: TenantTree, quotas: dict[int, object], capacity: int, use: Counter[int]) -> None:
        """`quotas`: the GPU type's quotas by tenant id; `use`: the GPUs each tenant's own jobs
        hold now."""
        self.parent: dict[int, int] = {}
        for tenant in quotas:
            path = tree.path(tenant) if tenant in tree else (tenant,)
            for below, above in zip(path, (*path[1:], ROOT), strict=True):
                if below in self.parent:
                    break
                self.parent[below] = above
        children: dict[int, list[int]] = {ROOT: []}
        for node, above in self.parent.items():
            children.setdefault(above, []).append(node)
        self.nominal: dict[int, int] = {}
        self.own_nominal: dict[int, int] = {}
        self.sq: dict[int, int] = {}
        self.g: dict[int, int] = {}
        self.borrowing_limit: dict[int, int | None] = {}
        self.v: dict[int, int] = {}
        for node in self._bottom_up(children):
            below = children.get(node, [])
            quota = quotas.get(node)
            below_nominal = sum(self.nominal[c] for c in below)
            if node == ROOT:
                self.nominal[node] = max(capacity, below_nominal)
            else:
                self.nominal[node] = quota.nominal if quota is not None else below_nominal
            self.own_nominal[node] = max(0, self.nominal[node] - below_nominal)
            self.sq[node] = self.own_nominal[node] + sum(self.sq[c] - self.g[c] for c in below)
            lending = getattr(quota, "lending_limit", None)
            self.g[node] = max(0, self.sq[node] - lending) if lending is not None else 0
            self.borrowing_limit[node] = getattr(quota, "borrowing_limit", None)
            self.v[node] = use.get(node, 0) + sum(max(0, self.v[c] - self.g[c]) for c in below)
        self.own_use: Counter[int] = Counter({t: n for t, n in use.items() if t in self.parent})
        self.borrowed = sum(self.own_borrowed(t) for t in self.own_use)
        self._paths: dict[int, tuple[int, ...]] = {}

    def _bottom_up(self, children: dict[int, list[int]]) -> list[int]:
        order, stack = [], [ROOT]
        while stack:
            node = stack.pop()
            order.append(node)
            stack.extend(children.get(node, []))
        return order[::-1]

    def path(self, tenant: int) -> tuple[int, ...]:
        """The tenant's node and those above it, up to the root (included)."""
        found = self._paths.get(tenant)
        if found is None:
            path, node = [tenant], tenant
            while node != ROOT:
                node = self.parent.get(node, ROOT)
                path.append(node)
            found = self._paths[tenant] = tuple(path)
        return found

    def own_borrowed(self, tenant: int) -> int:
        """GPUs of the tenant's own jobs above its own nominal."""
        return max(0, self.own_use[tenant] - self.own_nominal.get(tenant, 0))

    def borrowing(self, node: int) -> int:
        """How much the subtree borrows from above: V − SQ where positive."""
        return max(0, self.v[node] - self.sq[node]) if node != ROOT else 0

    def _after(self, tenant: int, gpus: int) -> list[tuple[int, int]]:
        """(node, its usage after) along the path, as far as `gpus` more of the tenant's own jobs
        change usage (what a node keeps for itself absorbs its subtree's first GPUs)."""
        changed, delta = [], gpus
        for node in self.path(tenant):
            if not delta:
                break
            before = self.v[node]
            after = before + delta
            changed.append((node, after))
            if node != ROOT:
                delta = max(0, after - self.g[node]) - max(0, before - self.g[node])
        return changed

    def assess(self, tenant: int, gpus: int) -> tuple[tuple[int, str] | None, int]:
        """For `gpus` more of the tenant's own jobs, in one walk up its path: why they would not
        fit, if they would not ((node, "limit") for a borrowing limit exceeded there, (ROOT,
        "idle") when what is lent does not cover them), and how many steps above the tenant (0:
        its own node) they would be lent from: the first node whose borrowing from above they
        would not raise (the root's index when every node's would rise). Within a pass, usage
        only grows, so both only get worse: a job need not be looked at again before its level."""
        path = self.path(tenant)
        after = self._after(tenant, gpus)
        refused, level = None, None
        for index, (node, usage) in enumerate(after):
            if node == ROOT:
                if usage > self.sq[ROOT]:
                    refused = refused or (ROOT, "idle")
                continue
            limit = self.borrowing_limit[node]
            if refused is None and limit is not None and usage > self.sq[node] + limit:
                refused = (node, "limit")
            if level is None and max(0, usage - self.sq[node]) <= self.borrowing(node):
                level = index
        if level is None:
            level = min(len(after), len(path) - 1)  # the first node the GPUs do not reach, or the root
        return refused, level

    def use(self, tenant: int, gpus: int) -> None:
        """The tenant's own jobs hold `gpus` more (fewer, when negative)."""
        before = self.own_borrowed(tenant)
        for node, after in self._after(tenant, gpus):
            self.v[node] = after
        self.own_use[tenant] += gpus
        self.borrowed += self.own_borrowed(tenant) - before

    def reclaim_order(self, tenant: int, victims: Iterable[tuple]) -> list[tuple[tuple, int, object]]:
        """Of borrowing jobs (tuples whose third item is their tenant), those a job of `tenant`
        within its own nominal may take GPUs back from, nearest in the tree first (a department's
        own projects before other departments), newest first among equals; each with what it is
        counted against and how much that borrows now: where the victim's and the tenant's paths
        meet, the subtree on the victim's side must borrow from above (or, when the victim's
        tenant is above this one, its own jobs borrow beyond its own nominal). Take a victim only
        while what it is counted against still borrows."""
        mine = self.path(tenant)
        level_of = {node: i for i, node in enumerate(mine)}
        ranked = []
        for victim in victims:
            theirs = self.path(victim[2])
            meet = next(i for i, node in enumerate(theirs) if node in level_of)
            if meet == 0:
                if theirs[0] == tenant:
                    continue  # never one's own jobs
                side, borrows = ("own", theirs[0]), self.own_borrowed(theirs[0])
            else:
                node = theirs[meet - 1]
                side, borrows = ("subtree", node), self.borrowing(node) if node in self.v else victim[1]
            if borrows > 0:
                ranked.append((level_of[theirs[meet]], side, borrows, victim))
        ranked.sort(key=lambda r: r[0])  # stable: newest first within a level
        return [(side, borrows, victim) for _, side, borrows, victim in ranked]
