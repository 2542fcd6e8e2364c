"""Reading a Slurm site's topology (`scontrol show topology`) into the domains admission keeps a
gang within. The dev cluster's own topology.conf (a tree) is read for real in
tests/integration/test_slurm_gangs.py; the lines here are the other forms Slurm prints."""

from __future__ import annotations

from factory.adapters.slurm.cli import gpu_capacity, node_switches

TREE = """\
SwitchName=leaf1 Level=0 LinkSpeed=1 Nodes=gpu1,cpu1
SwitchName=leaf2 Level=0 LinkSpeed=1 Nodes=gpu[2-3]
SwitchName=spine Level=1 LinkSpeed=1 Nodes=cpu1,gpu[1-3] Switches=leaf1,leaf2
"""
# topology/block (Slurm 23.11 and later).
BLOCKS = """\
BlockName=b1 BlockIndex=0 Nodes=node[01-04] BlockSize=4
BlockName=b2 BlockIndex=1 Nodes=node[05-08] BlockSize=4
AggregatedBlock=b1,b2 BlockIndex=0 Nodes=node[01-08] BlockSize=8
"""


def test_each_node_is_under_its_lowest_switch():
    level, switch_of = node_switches(TREE)
    assert level == "switch"
    assert switch_of == {"gpu1": "leaf1", "cpu1": "leaf1", "gpu2": "leaf2", "gpu3": "leaf2"}


def test_blocks_are_domains_too():
    level, switch_of = node_switches(BLOCKS)
    assert level == "block"
    assert switch_of["node04"] == "b1" and switch_of["node05"] == "b2" and len(switch_of) == 8


def test_no_topology_plugin_means_no_domains():
    assert node_switches("") == ("", {})
    sinfo = "gpu2|gang|gpu:h100:4|gpu:h100:0(IDX:N/A)|16|16000|idle\n"
    (pool,) = gpu_capacity(sinfo, node_switches(""))
    assert (pool.topology_level, dict(pool.domains)) == ("", {})


def test_a_pools_nodes_are_grouped_by_their_switch():
    sinfo = (
        "".join(f"{node}|gang|gpu:h100:4|gpu:h100:0(IDX:N/A)|16|16000|idle\n" for node in ("gpu2", "gpu3"))
        + "gpu1|gpu*|gpu:h100:8|gpu:h100:0(IDX:N/A)|16|16000|idle\n"
    )
    gang, gpu = gpu_capacity(sinfo, node_switches(TREE))
    assert (gang.gpu_type, gang.topology_level, dict(gang.domains)) == (
        "gang/h100",
        "switch",
        {"leaf2": ("gpu2", "gpu3")},
    )
    assert dict(gpu.domains) == {"leaf1": ("gpu1",)}


def test_a_pool_keeps_its_topology_when_slurm_does_not_say(db, h100):
    """`scontrol show topology` failed this time (gpu_capacity's topology None): the switches
    stay as last read; a topology Slurm says is gone is gone."""
    from factory.models import Cluster, Pool

    cluster = Cluster.objects.create(slug="slurm-t", name="Slurm", kind="slurm")
    pool = Pool.objects.create(cluster=cluster, gpu_type=h100, capacity=8, partition="gang")
    sinfo = "".join(
        f"{node}|gang|gpu:h100:4|gpu:h100:0(IDX:N/A)|16|16000|idle\n" for node in ("gpu2", "gpu3")
    )
    for topology, expected in [
        (node_switches(TREE), {"level": "switch", "domains": {"leaf2": ["gpu2", "gpu3"]}}),
        (None, {"level": "switch", "domains": {"leaf2": ["gpu2", "gpu3"]}}),
        (node_switches(""), {}),
    ]:
        (health,) = gpu_capacity(sinfo, topology)
        pool.record_shape(health)
        pool.refresh_from_db()
        assert (pool.node_count, pool.topology) == (2, expected)
