"""Drain and resume of failed hardware in real backends: the dev cluster's Slurm (its node cpu1,
which no other test uses, is given simulated GPUs: no real GPU exists here), and a Kubernetes
cordon through the fake API server (no Kubernetes can run here; see k8s_fake.py).

On Slurm the adapter's tools run as the portal's worker account aif-portal, a Slurm Operator,
which Slurm does not let update nodes: it drains and resumes through scripts/slurm-node-state,
the one program its sudo rule lets it run as SlurmUser (root here)."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading

import pytest
import requests
import yaml
from django.utils import timezone

from factory.adapters import DrainTarget
from factory.adapters.kubernetes import DRAIN_ANNOTATION
from factory.models import Cluster, Pool
from fleet.choices import Health
from fleet.inventory import register_node
from fleet.models import Gpu, Node
from fleet.scrape import scrape_cluster
from fleet.simulator import SimGpu, SimNode, Simulator, gpu_uuid, serve
from quotas.admission import Snapshot

from .conftest import PORTAL_USER
from .k8s_fake import FakeKubernetes

pytestmark = pytest.mark.django_db

NODE = "cpu1"  # the dev cluster's CPU node: ours to drain, and always resumed after


def sinfo(node: str) -> tuple[str, str]:
    """The node's state and reason. Without sinfo's flag for a slurmd slow to answer (`*`), which
    a busy machine sets now and then and which says nothing of a drain."""
    out = subprocess.run(["sinfo", "-h", "-N", "-n", node, "-o", "%T|%E"], capture_output=True, text=True)
    state, _, reason = out.stdout.strip().partition("|")
    return state.rstrip("*"), reason


def force_resume(node: str) -> None:
    if "drain" in sinfo(node)[0]:
        subprocess.run(["scontrol", "update", f"NodeName={node}", "State=RESUME"], check=False)


@pytest.fixture
def exporter(fast_rules_settings):
    sim = Simulator([SimNode(NODE, [SimGpu(i, gpu_uuid(NODE, i), "h100") for i in range(4)])])
    server = serve(sim, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sim.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    yield sim
    server.shutdown()
    server.server_close()


@pytest.fixture
def fast_rules_settings(settings):
    settings.FACTORY_GPU_HEALTH_RULES = '{"resume_after_seconds": 0}'
    settings.FACTORY_TELEMETRY_TIMEOUT = 1.0
    return settings


@pytest.fixture
def slurm_node(db, h100, slurm_tools_as_the_portal):
    if not shutil.which("scontrol"):
        if os.environ.get("FACTORY_REQUIRE_SLURM"):
            raise RuntimeError("Slurm is required (scripts/slurm-dev-cluster) but scontrol is not installed")
        pytest.skip("no Slurm here")
    if "drain" in sinfo(NODE)[0]:
        pytest.skip(f"{NODE} is drained by someone else: not ours to touch")
    cluster = Cluster.objects.create(slug="slurm-fleet", name="Slurm", kind="slurm", region="local")
    Pool.objects.create(cluster=cluster, gpu_type=h100, capacity=8, partition="debug")
    try:
        yield cluster
    finally:
        force_resume(NODE)


@pytest.mark.slurm
def test_xid_79_drains_the_slurm_node_with_the_portals_reason_and_resumes_it(slurm_node, exporter, h100):
    """As the portal's own account: the drain and the resume are what its rights allow."""
    register_node(slurm_node, NODE, f"{exporter.base_url}/nodes/{NODE}/metrics", h100)
    scrape_cluster(slurm_node)
    requests.post(f"{exporter.base_url}/faults", json={"node": NODE, "fault": "xid79", "gpu": 3}, timeout=5)
    scrape_cluster(slurm_node)
    state, reason = sinfo(NODE)
    assert "drain" in state
    assert reason == "factory: XID 79 (GPU has fallen off the bus) on GPU 3"
    assert Node.objects.get(name=NODE).drained_by_portal
    # The whole node is out of service, and out of admission's count.
    [pool] = [p for p in Snapshot().pools[h100.pk] if p.cluster == "slurm-fleet"]
    assert pool.capacity == 8 - 4
    requests.delete(f"{exporter.base_url}/faults", timeout=5)
    scrape_cluster(slurm_node, now=timezone.now() + timezone.timedelta(seconds=1))
    scrape_cluster(slurm_node, now=timezone.now() + timezone.timedelta(seconds=2))
    assert "drain" not in sinfo(NODE)[0]
    assert not Node.objects.get(name=NODE).drained_by_portal
    assert Gpu.objects.get(uuid=gpu_uuid(NODE, 3)).health == Health.HEALTHY


def as_user(user: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", user, "--", *argv], capture_output=True, text=True)


NODE_STATE = "/usr/local/libexec/aifactory/slurm-node-state"


@pytest.mark.slurm
def test_only_the_portals_account_may_drain_and_only_through_its_helper_with_its_own_reason(slurm_node):
    """The least rights that drain: not a Slurm administrator, no scontrol as root; one helper,
    run as root through sudo, that drains only with a "factory:" reason. A researcher has none."""
    by_hand = ["scontrol", "update", f"NodeName={NODE}", "State=DRAIN", "Reason=factory: by hand"]
    assert "Invalid user id" in as_user(PORTAL_USER, *by_hand).stderr  # no Slurm administrator
    refused = [
        (PORTAL_USER, ["sudo", "-n", "/usr/bin/scontrol", "update", f"NodeName={NODE}", "State=DRAIN"]),
        (PORTAL_USER, ["sudo", "-n", NODE_STATE, "drain", NODE, "maintenance by the portal"]),
        (PORTAL_USER, ["sudo", "-n", NODE_STATE, "drain", f"{NODE} State=DOWN", "factory: x"]),
        ("aif-alice", ["sudo", "-n", NODE_STATE, "drain", NODE, "factory: a researcher"]),
        ("aif-alice", by_hand),
    ]
    for user, argv in refused:
        assert as_user(user, *argv).returncode != 0, (user, argv)
        assert "drain" not in sinfo(NODE)[0], (user, argv)
    drained = as_user(PORTAL_USER, "sudo", "-n", NODE_STATE, "drain", NODE, "factory: XID 79 on GPU 0")
    assert drained.returncode == 0, drained.stderr
    assert sinfo(NODE) == ("drained", "factory: XID 79 on GPU 0")
    # An operator takes the drain over: the helper resumes it no more, whoever asks.
    subprocess.run(["scontrol", "update", f"NodeName={NODE}", "Reason=fan replaced tomorrow"], check=True)
    assert as_user(PORTAL_USER, "sudo", "-n", NODE_STATE, "resume", NODE).returncode == 3
    assert sinfo(NODE) == ("drained", "fan replaced tomorrow")


@pytest.mark.slurm
def test_a_node_an_operator_drained_is_neither_redrained_nor_resumed(slurm_node):
    subprocess.run(
        ["scontrol", "update", f"NodeName={NODE}", "State=DRAIN", "Reason=maintenance"], check=True
    )
    adapter = slurm_node.adapter()
    target = DrainTarget(NODE, "h100", (0,))
    adapter.drain(target, "factory: XID 79 on GPU 0")
    assert sinfo(NODE)[1] == "maintenance"
    assert adapter.resume(target) is False
    assert "drain" in sinfo(NODE)[0]


def k8s_cluster(fake: FakeKubernetes, gpu_type) -> Cluster:
    connection = {"kubeconfig": yaml.safe_dump(fake.kubeconfig()), "allow_any_image": True}
    cluster = Cluster.objects.create(slug="k8s", name="Kubernetes", kind="kubernetes", connection=connection)
    Pool.objects.create(cluster=cluster, gpu_type=gpu_type, capacity=8)
    return cluster


@pytest.fixture
def fake():
    server = FakeKubernetes().start_server()
    yield server
    server.stop_server()


def test_a_failed_gpu_cordons_its_kubernetes_node_and_only_the_portals_cordon_is_lifted(fake, h100):
    fake.add_node("gpu-node-a", {}, 8)
    fake.add_node("gpu-node-b", {}, 8, unschedulable=True)  # an operator's cordon
    adapter = k8s_cluster(fake, h100).adapter()
    adapter.drain(DrainTarget("gpu-node-a", "h100", (5,)), "factory: XID 95 on GPU 5")
    node = fake.nodes["gpu-node-a"]
    assert node["spec"]["unschedulable"] is True
    assert node["metadata"]["annotations"][DRAIN_ANNOTATION] == "factory: XID 95 on GPU 5"
    patches = fake.calls("PATCH", "/api/v1/nodes/gpu-node-a")
    assert patches[0].headers["content-type"].startswith("application/strategic-merge-patch+json")
    assert adapter.health().message.endswith("not ready or cordoned: gpu-node-a, gpu-node-b")
    assert adapter.resume(DrainTarget("gpu-node-a", "h100", (5,))) is True
    assert "unschedulable" not in fake.nodes["gpu-node-a"]["spec"]
    assert DRAIN_ANNOTATION not in fake.nodes["gpu-node-a"]["metadata"].get("annotations", {})
    adapter.drain(DrainTarget("gpu-node-b", "h100", (0,)), "factory: XID 79 on GPU 0")
    assert DRAIN_ANNOTATION not in fake.nodes["gpu-node-b"]["metadata"].get("annotations", {})
    assert adapter.resume(DrainTarget("gpu-node-b", "h100", (0,))) is False
    assert fake.nodes["gpu-node-b"]["spec"]["unschedulable"] is True
