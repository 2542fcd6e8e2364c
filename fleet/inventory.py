"""Nodes the portal scrapes. Sites register theirs (admin, or `register_node`); the local
backend's simulated GPUs are served by the GPU exporter simulator, one node per pool."""

from __future__ import annotations

from pathlib import Path

from django.db import transaction

from factory.choices import ClusterKind
from factory.models import Cluster, GpuType

from .models import Node
from .simulator import SimGpu, SimNode, gpu_uuid


def register_node(cluster: Cluster, name: str, exporter_url: str, gpu_type: GpuType | None = None) -> Node:
    node, _ = Node.objects.update_or_create(
        cluster=cluster, name=name, defaults={"exporter_url": exporter_url, "gpu_type": gpu_type}
    )
    return node


def local_simulated_nodes(base_url: str) -> list[SimNode]:
    """The simulator's nodes for every local cluster's pools, and their Node rows (registered to
    be scraped at `base_url`/nodes/<name>/metrics)."""
    nodes = []
    types = {t.slug: t for t in GpuType.objects.all()}
    with transaction.atomic():
        for cluster in Cluster.objects.filter(kind=ClusterKind.LOCAL):
            for name, gpu_type, count, slots_file in cluster.adapter().simulated_nodes():
                register_node(
                    cluster, name, f"{base_url.rstrip('/')}/nodes/{name}/metrics", types.get(gpu_type)
                )
                gpus = [SimGpu(i, gpu_uuid(name, i), gpu_type) for i in range(count)]
                nodes.append(SimNode(name, gpus, Path(slots_file)))
    return nodes
