"""What a pool's nodes look like, and whether a job's nodes fit on them: the one place for the
rules that submission (can this job ever run?) and admission (does it fit now?) share.

A job asks for `nodes` nodes, each with `gpus_per_node` GPUs, `cpus` CPUs and `memory_gb` GiB
(Slurm's `G`: 1024 MB). A pool knows its nodes from its backend (the largest node's GPUs, CPUs and
memory, and how many nodes have its GPUs); until its backend has said, a pool is one node of its
whole capacity, with no known CPU or memory limit.
"""

from __future__ import annotations

import dataclasses

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

    @property
    def known(self) -> bool:
        return bool(self.node_count and self.node_gpus)

    def node_sizes(self) -> list[tuple[int, int]]:
        """(GPUs of a node, how many such nodes) the pool's capacity is made of: whole nodes of
        the backend's shape up to the capacity, and what is left of it as one smaller node."""
        if not self.known:
            return [(self.capacity, 1)] if self.capacity else []
        full = min(self.node_count, self.capacity // self.node_gpus)
        sizes = [(self.node_gpus, full)] if full else []
        rest = self.capacity - full * self.node_gpus
        if rest > 0 and full < self.node_count:
            sizes.append((rest, 1))
        return sizes

    @property
    def most_gpus_per_node(self) -> int:
        return max((size for size, _ in self.node_sizes()), default=0)

    @property
    def most_nodes(self) -> int:
        return sum(count for _, count in self.node_sizes())

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

    The portal does not know which node a backend put each running job on; counting them here
    as packed onto the fullest nodes they fit keeps the total right and never admits a gang
    whose nodes could not all be free at once."""

    counts: dict[tuple[int, int], int]

    @classmethod
    def empty(cls, shape: NodeShape) -> FreeNodes:
        return cls({(size, size): count for size, count in shape.node_sizes() if count})

    def copy(self) -> FreeNodes:
        return FreeNodes(dict(self.counts))

    def nodes_with(self, gpus: int) -> int:
        """How many nodes have at least `gpus` free GPUs."""
        return sum(count for (_, free), count in self.counts.items() if free >= gpus)

    def fits(self, nodes: int, gpus_per_node: int) -> bool:
        return self.nodes_with(gpus_per_node) >= nodes

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

    @property
    def free(self) -> int:
        return sum(free * count for (_, free), count in self.counts.items())

    @property
    def idle_nodes(self) -> int:
        return sum(count for (size, free), count in self.counts.items() if free == size)
