"""What a pool's nodes look like, and whether a job's nodes fit on them: the one place for the
rules that submission (can this job ever run?) and admission (does it fit now?) share.

A job asks for `nodes` nodes, each with `gpus_per_node` GPUs, `cpus` CPUs and `memory_gb` GiB
(Slurm's `G`: 1024 MB). A pool knows its nodes from its backend (the largest node's GPUs, CPUs and
memory, and how many nodes have its GPUs); until its backend has said, a pool is one node of its
whole capacity, with no known CPU or memory limit. Where the site describes its topology (Slurm's
topology.conf, Kubernetes topology labels), a pool also knows which of its nodes share a domain (a
leaf switch, a block or rack), and admission keeps a gang's nodes within one where it can.
"""

from __future__ import annotations

import dataclasses
import functools
from collections import Counter
from collections.abc import Mapping

MB_PER_GB = 1024


def gigabytes(megabytes: int) -> str:
    """16000 → "15.6", 16384 → "16"."""
    return f"{megabytes / MB_PER_GB:.1f}".removesuffix(".0")


@dataclasses.dataclass(frozen=True)
class NodeShape:
    capacity: int  # the pool's GPUs, as its admin set them: never exceeded
    node_count: int | None = None
    node_gpus: int | None = None
    node_cpus: int | None = None
    node_memory_mb: int | None = None
    # The pool's nodes by the topology domain they share, where the site describes one
    # ({domain: node names}), and what such a domain is ("switch", a node label).
    domains: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    level: str = ""

    @property
    def known(self) -> bool:
        return bool(self.node_count and self.node_gpus)

    def node_sizes(self) -> list[tuple[int, int]]:
        """(GPUs of a node, how many such nodes) the pool's capacity is made of: whole nodes of
        the backend's shape up to the capacity, and what is left of it as one smaller node."""
        return self._sizes

    @functools.cached_property
    def _sizes(self) -> list[tuple[int, int]]:
        sizes = Counter(size for nodes in self.in_service().values() for size in nodes)
        return sorted(sizes.items(), reverse=True)

    @functools.cached_property
    def most_gpus_per_node(self) -> int:
        return max((size for size, _ in self.node_sizes()), default=0)

    @functools.cached_property
    def most_nodes(self) -> int:
        return sum(count for _, count in self.node_sizes())

    def in_service(self, out: Mapping[str, int] | None = None) -> dict[str | None, list[int]]:
        """The GPUs of each node that can take jobs, by topology domain (None: nodes in no known
        domain), given the GPUs out of service on each node ({node name: GPUs}, failed or
        drained): whole nodes of the backend's shape less what is out, within the capacity."""
        out = out or {}
        if not self.known:
            left = self.capacity - sum(out.values())
            return {None: [left]} if left > 0 else {}
        nodes: dict[str | None, list[int]] = {}
        named: set[str] = set()
        for domain, names in sorted(self.domains.items()):
            nodes[domain] = [self.node_gpus - out.get(name, 0) for name in names]
            named.update(names)
        anonymous = max(0, self.node_count - len(named))
        if anonymous:
            # Nodes the backend named no domain for: those out of service are among them.
            short = [gpus for name, gpus in sorted(out.items()) if name not in named][:anonymous]
            nodes[None] = [self.node_gpus - gpus for gpus in short] + [self.node_gpus] * (
                anonymous - len(short)
            )
        return self._within_capacity(nodes)

    def _within_capacity(self, nodes: dict[str | None, list[int]]) -> dict[str | None, list[int]]:
        """Nodes in order, largest first, up to the capacity; the last one cut to what is left."""
        budget, kept = self.capacity, {}
        for domain, sizes in nodes.items():
            for size in sorted(sizes, reverse=True):
                size = min(size, budget)
                if size <= 0:
                    continue
                kept.setdefault(domain, []).append(size)
                budget -= size
        return kept

    def refusals(
        self,
        *,
        nodes: int,
        gpus_per_node: int,
        cpus: int | None,
        memory_gb: int | None,
        gangs: bool,
        gpu: str,
        cluster: str,
    ) -> dict[str, str]:
        """Why a job of this shape could never run on the pool ({field: message}; empty: it
        could). `gangs` says whether the pool's backend starts a job on several nodes at once."""
        refused: dict[str, str] = {}
        if nodes > 1 and not gangs:
            refused["nodes"] = f"{cluster} runs one-node jobs only"
        elif nodes > self.most_nodes:
            refused["nodes"] = f"needs {nodes} nodes; {cluster} has {self.most_nodes} {gpu} node(s)"
        most = self.most_gpus_per_node
        if gpus_per_node > most:
            if nodes > 1:
                refused["gpus_per_node"] = (
                    f"needs {gpus_per_node} GPUs per node; {gpu} nodes of {cluster} have {most}"
                )
            elif self.known:
                refused["gpu_count"] = (
                    f"needs {gpus_per_node} GPUs on one node; {gpu} nodes of {cluster} have {most}"
                )
            else:
                refused["gpu_count"] = (
                    f"at most {most} {gpu} GPUs fit on one cluster ({cluster}); you asked for {gpus_per_node}"
                )
        if cpus is not None and self.node_cpus is not None and cpus > self.node_cpus:
            refused["cpus"] = f"needs {cpus} CPUs per node; {gpu} nodes of {cluster} have {self.node_cpus}"
        if (
            memory_gb is not None
            and self.node_memory_mb is not None
            and memory_gb * MB_PER_GB > self.node_memory_mb
        ):
            have = gigabytes(self.node_memory_mb)
            refused["memory_gb"] = f"needs {memory_gb} GB per node; {gpu} nodes of {cluster} have {have} GB"
        return refused


@dataclasses.dataclass
class FreeNodes:
    """The free GPUs of a pool's nodes, as admission counts them in memory: how many nodes of each
    (size, free GPUs). Nodes are interchangeable within a pool, so a histogram is enough, and a
    decision costs a few dictionary steps however many nodes there are.

    The portal does not know which node a backend put each running job on, at least not before it
    runs; counting them here as packed onto the fullest nodes they fit keeps the total right and
    never admits a gang whose nodes could not all be free at once."""

    counts: dict[tuple[int, int], int]
    # Another FreeNodes that every change is made to as well: a pool's total over its domains.
    mirror: FreeNodes | None = dataclasses.field(default=None, repr=False, compare=False)

    @classmethod
    def empty(cls, shape: NodeShape) -> FreeNodes:
        return cls({(size, size): count for size, count in shape.node_sizes() if count})

    @classmethod
    def of(cls, sizes: list[int]) -> FreeNodes:
        """Nodes of these sizes, all free."""
        return cls({(size, size): count for size, count in Counter(sizes).items()})

    def copy(self) -> FreeNodes:
        return FreeNodes(dict(self.counts))

    def nodes_with(self, gpus: int) -> int:
        """How many nodes have at least `gpus` free GPUs."""
        return sum(count for (_, free), count in self.counts.items() if free >= gpus)

    def fits(self, nodes: int, gpus_per_node: int) -> bool:
        return self.nodes_with(gpus_per_node) >= nodes

    def tightest(self, gpus: int) -> int | None:
        """The fewest free GPUs of a node with at least `gpus` free (None: no such node)."""
        return min((free for _, free in self.counts if free >= gpus), default=None)

    def take(self, nodes: int, gpus_per_node: int) -> int:
        """Allocate the job's nodes, one rank per node, each on the fullest node it fits (best fit
        keeps whole nodes free for gangs). Returns how many of its nodes found no room (0: it fit)."""
        return self._shift(nodes, -gpus_per_node, lambda size, free: free >= gpus_per_node)

    def give_back(self, nodes: int, gpus_per_node: int) -> None:
        """Release a job's nodes (a preempted one): from the fullest nodes it could have been on."""
        self._shift(nodes, gpus_per_node, lambda size, free: free + gpus_per_node <= size)

    def _shift(self, nodes: int, delta: int, eligible) -> int:
        """Change the free GPUs of `nodes` distinct eligible nodes by `delta`, fullest first.
        The moves are planned on the counts as they were, so that no node moves twice."""
        left, moves = nodes, []
        for key in sorted((k for k in self.counts if eligible(*k)), key=lambda k: (k[1], k[0])):
            if not left:
                break
            moved = min(left, self.counts[key])
            moves.append((key, moved))
            left -= moved
        for (size, free), moved in moves:
            self._move((size, free), (size, free + delta), moved)
        return left

    def _move(self, old: tuple[int, int], new: tuple[int, int], count: int) -> None:
        if not count:
            return
        self.counts[old] -= count
        if not self.counts[old]:
            del self.counts[old]
        self.counts[new] = self.counts.get(new, 0) + count
        if self.mirror is not None:
            self.mirror._move(old, new, count)

    @property
    def free(self) -> int:
        return sum(free * count for (_, free), count in self.counts.items())

    @property
    def idle_nodes(self) -> int:
        return sum(count for (size, free), count in self.counts.items() if free == size)


class PoolNodes:
    """The free GPUs of a pool's nodes as admission counts them, per topology domain: a FreeNodes
    for each domain the site describes (a leaf switch, a block), and one (None) for the nodes in
    none, which is the whole pool where the site describes no topology.

    A gang goes within one domain where one has room for all its nodes (the one with the least
    room that does, keeping larger ones whole for larger gangs), else over as few as it can; a
    one-node job goes on the fullest node it fits, whichever domain that is in."""

    def __init__(self, domains: dict[str | None, FreeNodes], level: str = "") -> None:
        self.domains = domains
        self.level = level  # what a domain is ("switch", a node label); "" without topology
        # Where the site names domains, a gang may be kept within one of them.
        self.topology = bool(level) and any(name is not None for name in domains)
        self.where: dict[str, str] = {}  # node name → its domain, for jobs whose nodes are known
        # The whole pool, kept in step with its domains: whether a job fits at all costs the same
        # however many domains there are.
        if len(domains) == 1:
            self.total = next(iter(domains.values()))
        else:
            total: Counter[tuple[int, int]] = Counter()
            for free in domains.values():
                total.update(free.counts)
                free.mirror = None
            self.total = FreeNodes(dict(total))
            for free in domains.values():
                free.mirror = self.total

    @classmethod
    def empty(cls, shape: NodeShape, out: Mapping[str, int] | None = None) -> PoolNodes:
        """The pool's nodes in service (`out`: GPUs out of service per node name), all free."""
        nodes = cls(
            {domain: FreeNodes.of(sizes) for domain, sizes in shape.in_service(out).items()}, shape.level
        )
        if nodes.topology:
            nodes.where = {name: domain for domain, names in shape.domains.items() for name in names}
        return nodes

    def copy(self) -> PoolNodes:
        copied = PoolNodes({name: free.copy() for name, free in self.domains.items()}, self.level)
        copied.where = self.where
        return copied

    def nodes_with(self, gpus: int) -> int:
        return self.total.nodes_with(gpus)

    def fits(self, nodes: int, gpus_per_node: int) -> bool:
        return self.nodes_with(gpus_per_node) >= nodes

    def one_domain(self, nodes: int, gpus_per_node: int) -> str | None:
        """The domain a gang fits within, all its nodes at once (None: none does, or the site
        describes no topology): of those that have room, the one with the least."""
        if not self.topology or nodes < 2:
            return None
        room = [
            (count, name)
            for name, free in self.domains.items()
            if name is not None and (count := free.nodes_with(gpus_per_node)) >= nodes
        ]
        return min(room)[1] if room else None

    def take(self, nodes: int, gpus_per_node: int, domain: str | None = None) -> list[str]:
        """Allocate a job's nodes: within `domain` if given, else as the class says. Returns the
        named domains its nodes went to (which a gang spans)."""
        if domain is None and nodes > 1:
            domain = self.one_domain(nodes, gpus_per_node)
        if domain is not None and domain in self.domains:
            left = self.domains[domain].take(nodes, gpus_per_node)
            # Counted there by a pass that saw more room than there is: the rest goes elsewhere.
            return [domain] + [name for name in self._spread(left, gpus_per_node) if name != domain]
        if len(self.domains) == 1:
            only = next(iter(self.domains))
            self.domains[only].take(nodes, gpus_per_node)
            return [only] if only is not None else []
        if nodes == 1:
            fullest = [
                (tightest, name is None, name or "", name)
                for name, free in self.domains.items()
                if (tightest := free.tightest(gpus_per_node)) is not None
            ]
            if not fullest:
                return []
            name = min(fullest)[3]
            self.domains[name].take(1, gpus_per_node)
            return [name] if name is not None else []
        return self._spread(nodes, gpus_per_node)

    def _spread(self, nodes: int, gpus_per_node: int) -> list[str]:
        """A gang no one domain has room for: from the domains with the most room first."""
        left, used = nodes, []
        room = sorted(
            (
                (free.nodes_with(gpus_per_node), name is not None, name or "", name)
                for name, free in self.domains.items()
            ),
            reverse=True,
        )
        for count, _, _, name in room:
            if not left or not count:
                break
            moved = min(left, count)
            self.domains[name].take(moved, gpus_per_node)
            left -= moved
            if name is not None:
                used.append(name)
        return used

    def occupy(self, nodes: int, gpus_per_node: int, node_names: list[str], domain: str) -> None:
        """Count a job that holds nodes: on the domains of the nodes it runs on where the backend
        said which, else within the domain admission placed it in, else as a new job would go."""
        if self.where and node_names:
            by_domain = Counter(self.where.get(name) for name in node_names[:nodes])
            for name, count in by_domain.items():
                self.take(count, gpus_per_node, name)
            if sum(by_domain.values()) >= nodes:
                return
            nodes -= sum(by_domain.values())
        self.take(nodes, gpus_per_node, domain or None)

    def give_back(self, nodes: int, gpus_per_node: int, domain: str | None = None) -> None:
        """Release a job's nodes (a preempted one): within its domain if known."""
        order = [domain] if domain in self.domains else []
        order += [name for name in self.domains if name not in order]
        for name in order:
            nodes = self.domains[name]._shift(
                nodes, gpus_per_node, lambda size, free: free + gpus_per_node <= size
            )
            if not nodes:
                return

    @property
    def free(self) -> int:
        return self.total.free

    @property
    def idle_nodes(self) -> int:
        return self.total.idle_nodes
