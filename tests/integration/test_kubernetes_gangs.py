"""Gangs on Kubernetes, against the fake API server of k8s_fake.py (no kube-apiserver can run
here; the fake answers in the real format, validates Jobs and Services as the API server does, and
plays the Job controller: one pod per index of an Indexed Job, each with its completion index).

A gang is an Indexed Job with completions = parallelism = nodes, one pod per node with the GPUs
of one node, a headless Service of the Job's name (owned by the Job) so that each rank resolves
as <job>-<index>.<job>, the completion index as NODE_RANK, and a pod failure policy that fails
the whole Job when any rank exits non-zero."""

from __future__ import annotations

import pytest

from jobs import lifecycle
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
