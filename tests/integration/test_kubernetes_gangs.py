"""Gangs on Kubernetes, against the fake API server of k8s_fake.py (no kube-apiserver can run
here; the fake answers in the real format, validates Jobs and Services as the API server does, and
plays the Job controller: one pod per index of an Indexed Job, each with its completion index).

A gang is an Indexed Job with completions = parallelism = nodes, one pod per node with the GPUs
of one node, a headless Service of the Job's name (owned by the Job) so that each rank resolves
as <job>-<index>.<job>, the completion index as NODE_RANK, and a pod failure policy that fails
the whole Job when any rank exits non-zero."""

from __future__ import annotations

import pytest
import yaml

from jobs import lifecycle, submission
from jobs.choices import JobState
from jobs.tasks import cancel_job

from . import test_kubernetes as k8s_tests
from .test_kubernetes import dispatched, synced

pytestmark = [pytest.mark.django_db, k8s_tests.fake_only]

# The fixtures of test_kubernetes.py, used here as they are there.
fake = k8s_tests.fake
backend = k8s_tests.backend
k8s_cluster = k8s_tests.k8s_cluster
k8s_job = k8s_tests.k8s_job
kueue_cluster = k8s_tests.kueue_cluster

JOBS = "/apis/batch/v1/namespaces/aif-demo-lab/jobs"


def gang(k8s_job, **overrides):
    spec = {"nodes": 2, "gpus_per_node": 4, "gpu_count": None, **overrides}
    return k8s_job(**spec)


def test_a_gang_is_an_indexed_job_with_a_headless_service(k8s_job, fake):
    job = dispatched(gang(k8s_job))
    assert job.state == JobState.SUBMITTED, job.reason
    namespace, name = job.external_id.split("/")
    created = fake.calls("POST", JOBS)[-1].body["spec"]
    assert (created["completionMode"], created["completions"], created["parallelism"]) == ("Indexed", 2, 2)
    assert created["backoffLimit"] == 0
    assert created["podFailurePolicy"] == {
        "rules": [
            {"action": "FailJob", "onExitCodes": {"containerName": "job", "operator": "NotIn", "values": [0]}}
        ]
    }
    pod_spec = created["template"]["spec"]
    assert pod_spec["subdomain"] == name
    container = pod_spec["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"  # one node's GPUs per pod
    env = {e["name"]: e for e in container["env"]}
    assert env["MASTER_ADDR"]["value"] == f"{name}-0.{name}"
    assert env["MASTER_PORT"]["value"] == "29500"
    assert env["WORLD_SIZE"]["value"] == "2"
    assert env["FACTORY_NODE_LIST"]["value"] == f"{name}-0.{name},{name}-1.{name}"
    assert env["NODE_RANK"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}
    }

    service = fake.services[(namespace, name)]
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == {"aifactory.io/dispatch-key": str(job.uid)}
    owner = service["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"]) == (
        "Job",
        name,
        fake.job(job.external_id)["metadata"]["uid"],
    )

    fake.start(job.external_id)
    pods = sorted(fake.pods_of(job.external_id), key=lambda p: p["spec"]["hostname"])
    assert [p["spec"]["hostname"] for p in pods] == [f"{name}-0", f"{name}-1"]
    assert all(p["spec"]["subdomain"] == name for p in pods)
    assert synced(job).state == JobState.RUNNING
    fake.write_rank_log(job.external_id, 0, "rank 0 here\n")
    fake.write_rank_log(job.external_id, 1, "rank 1 here\n")
    adapter = job.cluster.adapter()
    assert adapter.logs(job, 0).text == "rank 0 here\n"
    assert adapter.logs(job, 0, rank=1).text == "rank 1 here\n"
    fake.succeed(job.external_id)
    job = synced(job)
    assert (job.state, job.exit_code) == (JobState.SUCCEEDED, 0)
    assert fake.job(job.external_id)["status"]["completedIndexes"] == "0-1"
    fake.expire(job.external_id)
    assert (namespace, name) not in fake.services  # the garbage collector took it with the Job


def test_a_failed_rank_fails_the_whole_gang_with_its_exit_code(k8s_job, fake):
    job = dispatched(gang(k8s_job))
    fake.start(job.external_id)
    assert synced(job).state == JobState.RUNNING
    fake.fail_index(job.external_id, 1, exit_code=3)
    job = synced(job)
    assert (job.state, job.exit_code) == (JobState.FAILED, 3)  # not the other rank's SIGTERM (143)
    assert job.reason == "stopped by the Job's pod failure policy"


def test_a_retried_dispatch_makes_neither_a_second_job_nor_a_second_service(k8s_job, fake):
    job = gang(k8s_job)
    adapter = job.cluster.adapter()
    first = adapter.submit(job)
    assert adapter.submit(job) == first
    assert len(fake.jobs) == 1 and len(fake.services) == 1


def test_cancelling_a_gang_deletes_its_job_pods_and_service(k8s_job, fake, owner):
    job = dispatched(gang(k8s_job))
    fake.start(job.external_id)
    assert synced(job).state == JobState.RUNNING
    lifecycle.cancel(job, owner)
    cancel_job(job.pk)
    assert not fake.jobs and not fake.services
    assert not fake.pods_of(job.external_id)
    assert synced(job).state == JobState.CANCELLED


def test_with_kueue_a_gang_waits_suspended_and_starts_whole(k8s_job, kueue_cluster, fake, a100):
    job = dispatched(gang(k8s_job, cluster=kueue_cluster, gpu_type=a100))
    assert fake.calls("POST", JOBS)[-1].body["spec"]["suspend"] is True
    assert not fake.pods_of(job.external_id)
    assert synced(job).reason == "waiting in the cluster's Kueue queue"
    fake.kueue_admit(job.external_id)
    assert len(fake.pods_of(job.external_id)) == 2  # all ranks at once
    assert synced(job).state == JobState.RUNNING


# --- topology: a gang within one block -----------------------------------------------------------

BLOCK = "cloud.google.com/gce-topology-block"
SUBBLOCK = "cloud.google.com/gce-topology-subblock"


def topology_nodes(fake, gpu_label: str, product: str) -> None:
    """Six nodes of 8 GPUs, labelled as a cloud provider labels them: block b1 holds subblocks s1
    (n1, n2, n3) and s2 (n4); block b2 holds a subblock named s1 too (n5); n6 has no topology labels."""
    place = {
        "n1": ("b1", "s1"),
        "n2": ("b1", "s1"),
        "n3": ("b1", "s1"),
        "n4": ("b1", "s2"),
        "n5": ("b2", "s1"),
    }
    for name in ("n1", "n2", "n3", "n4", "n5", "n6"):
        labels = {gpu_label: product}
        if name in place:
            labels.update({BLOCK: place[name][0], SUBBLOCK: place[name][1]})
        fake.add_node(name, labels, gpus=8)
    fake.add_node("n7", {gpu_label: product, BLOCK: "b2", SUBBLOCK: "s1"}, gpus=8, unschedulable=True)


def test_health_groups_a_pools_nodes_by_topology_domain(fake, h100):
    """A domain is named by its labels' values down to the last level (subblock s1 of b1 and of b2
    are two domains); a node without the labels is in none, a cordoned one is not counted."""
    from factory.models import Pool
    from factory.tasks import refresh_health

    cluster = k8s_tests.make_cluster(
        fake.kubeconfig(), h100, slug="k8s-topo", topology_labels=[BLOCK, SUBBLOCK]
    )
    topology_nodes(fake, k8s_tests.GPU_LABEL, k8s_tests.GPU_PRODUCT)
    assert refresh_health(cluster).ok
    pool = Pool.objects.get(cluster=cluster)
    assert (pool.node_count, pool.node_gpus) == (6, 8)
    assert pool.topology == {
        "level": SUBBLOCK,
        "domains": {"b1/s1": ["n1", "n2", "n3"], "b1/s2": ["n4"], "b2/s1": ["n5"]},
    }
    cluster.refresh_from_db()  # as shown on the clusters page and the API: nodes per domain
    assert cluster.health["pools"][0]["domains"] == {"b1/s1": 3, "b1/s2": 1, "b2/s1": 1}


def admitted_gang(tenant, owner, gpu_type, **spec):
    """A gang submitted and admitted by a real admission pass."""
    from quotas.admission import admit_pending

    job, _ = submission.submit(
        tenant=tenant,
        owner=owner,
        spec={
            "name": "gang",
            "command": "echo hello",
            "image": k8s_tests.IMAGE,
            "gpu_type": gpu_type,
            "nodes": 2,
            "gpus_per_node": 8,
            "time_limit_minutes": 5,
            "cpus": 1,
            "memory_gb": 1,
            **spec,
        },
    )
    assert admit_pending().admitted == 1
    job.refresh_from_db()
    return job


def test_without_kueue_a_gang_prefers_the_nodes_of_the_domain_admission_chose(fake, tenant, owner, h100):
    from factory.models import Pool
    from factory.tasks import refresh_health
    from quotas.models import Quota

    cluster = k8s_tests.make_cluster(fake.kubeconfig(), h100, slug="k8s-topo", topology_labels=[BLOCK])
    Pool.objects.filter(cluster=cluster).update(capacity=48)
    topology_nodes(fake, k8s_tests.GPU_LABEL, k8s_tests.GPU_PRODUCT)
    assert refresh_health(cluster).ok
    Quota.objects.create(tenant=tenant, gpu_type=h100, nominal=48)
    job = admitted_gang(tenant, owner, h100)
    # Blocks: b1 has 4 nodes, b2 one (n7 is cordoned): a gang of 2 fits only in b1.
    assert job.topology_domain == "b1"
    assert job.events.filter(message__endswith=f", under one {BLOCK}: b1").exists()
    job = dispatched(job)
    created = fake.calls("POST", JOBS)[-1].body["spec"]["template"]
    assert "annotations" not in created["metadata"]  # no Kueue: nobody to read its annotations
    assert created["spec"]["affinity"] == {
        "nodeAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "preference": {"matchExpressions": [{"key": BLOCK, "operator": "In", "values": ["b1"]}]},
                }
            ]
        }
    }
    fake.start(job.external_id)
    assert {pod["spec"]["nodeName"] for pod in fake.pods_of(job.external_id)} <= {"n1", "n2", "n3", "n4"}


@pytest.fixture
def kueue_topology(fake, a100):
    from factory.models import Pool
    from factory.tasks import refresh_health

    def make(**settings):
        cluster = k8s_tests.make_cluster(
            fake.kubeconfig(),
            a100,
            slug="k8s-tas",
            kueue_queue="team-queue",
            topology_labels=[BLOCK],
            **settings,
        )
        Pool.objects.filter(cluster=cluster).update(capacity=48)
        topology_nodes(fake, k8s_tests.GPU_LABEL, k8s_tests.GPU_PRODUCT)
        assert refresh_health(cluster).ok
        return cluster

    return make


def test_with_kueue_a_gang_asks_its_topology_aware_scheduling_for_one_block(
    k8s_job, kueue_topology, fake, a100
):
    cluster = kueue_topology()
    job = dispatched(gang(k8s_job, cluster=cluster, gpu_type=a100, gpus_per_node=8, nodes=3))
    template = fake.calls("POST", JOBS)[-1].body["spec"]["template"]
    assert template["metadata"]["annotations"] == {"kueue.x-k8s.io/podset-preferred-topology": BLOCK}
    assert "affinity" not in template["spec"]  # Kueue places the pods, in the block it picks
    assert fake.kueue_admit(job.external_id)
    pods = fake.pods_of(job.external_id)
    assert [pod["spec"]["nodeSelector"][BLOCK] for pod in pods] == ["b1"] * 3
    assert len({pod["spec"]["nodeName"] for pod in pods}) == 3
    assert synced(job).state == JobState.RUNNING


def test_a_required_topology_keeps_a_gang_no_block_has_room_for_waiting(k8s_job, kueue_topology, fake, a100):
    cluster = kueue_topology(topology_required=True)
    job = dispatched(gang(k8s_job, cluster=cluster, gpu_type=a100, gpus_per_node=8, nodes=5))
    template = fake.calls("POST", JOBS)[-1].body["spec"]["template"]
    assert template["metadata"]["annotations"] == {"kueue.x-k8s.io/podset-required-topology": BLOCK}
    assert not fake.kueue_admit(job.external_id)  # b1 has 4 nodes, b2 one: Kueue leaves it queued
    assert not fake.pods_of(job.external_id)
    assert synced(job).reason == "waiting in the cluster's Kueue queue"


@pytest.mark.parametrize(
    ("connection", "message"),
    [
        ({"topology_required": True, "topology_labels": [BLOCK]}, "'topology_required' needs 'kueue_queue'"),
        ({"topology_labels": ["not a label!"]}, "Entry 1 of connection setting 'topology_labels'"),
        ({"topology_labels": [BLOCK, BLOCK]}, "names a label twice"),
    ],
)
def test_topology_settings_are_checked(fake, connection, message):
    from factory.adapters.kubernetes import KubernetesConnection

    with pytest.raises(ValueError, match=message):
        KubernetesConnection.parse({"kubeconfig": yaml.safe_dump(fake.kubeconfig()), **connection})
