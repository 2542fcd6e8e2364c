"""A pool's nodes as admission counts them (factory.shapes): nodes in service, and free nodes per
topology domain kept in step with the pool's total."""

from __future__ import annotations

import random
from collections import Counter

from factory.shapes import NodeShape, PoolNodes

SWITCHED = NodeShape(
    capacity=48, node_count=6, node_gpus=8, level="switch", domains={"a": ("a1", "a2"), "b": ("b1", "b2")}
)


def test_gpus_out_of_service_come_off_their_own_nodes():
    out = {"a1": 1, "b2": 8, "x9": 3}  # b2 drained whole; x9 is one of the two nodes under no switch
    assert SWITCHED.in_service(out) == {"a": [8, 7], "b": [8], None: [8, 5]}


def test_the_capacity_set_bounds_the_nodes_in_service():
    capped = NodeShape(capacity=20, node_count=3, node_gpus=8)
    assert capped.in_service() == {None: [8, 8, 4]}
    assert capped.in_service({"n1": 2}) == {None: [8, 8, 4]}  # 22 in service, 20 usable
    assert NodeShape(capacity=12).in_service({"n1": 2}) == {None: [10]}  # shape unknown: one node


def test_a_pools_total_stays_the_sum_of_its_domains():
    rng = random.Random(3)
    nodes = PoolNodes.empty(SWITCHED, {"a2": 3})
    for _ in range(200):
        count, per_node = rng.choice([(1, 1), (1, 4), (2, 8), (3, 2), (1, 8)])
        if rng.random() < 0.6:
            nodes.take(count, per_node)
        else:
            nodes.give_back(count, per_node, rng.choice(["a", "b", None]))
        summed = Counter()
        for free in nodes.domains.values():
            summed.update(free.counts)
        assert nodes.total.counts == +summed
        assert 0 <= nodes.free <= 45


def test_a_copy_is_counted_apart_from_its_original():
    nodes = PoolNodes.empty(SWITCHED)
    copied = nodes.copy()
    copied.take(2, 8, "a")
    assert (nodes.free, copied.free) == (48, 32)
    assert nodes.one_domain(2, 8) == "a" and copied.one_domain(2, 8) == "b"
