"""The kubernetes backend, over HTTP, through the official client.

No Kubernetes API server can be installed on these machines (none is packaged in the registries
reachable here, and there is no container engine), so these tests run against an HTTP fake of the
API server (k8s_fake.py) that answers in a real server's exact shapes and lets a test play the job
controller and Kueue. With FACTORY_TEST_KUBECONFIG naming a kubeconfig (an explicit opt-in, so a
developer's everyday KUBECONFIG never gets test Jobs), the same tests run against that real cluster;
those that need the fake's controls (exact request bodies, call counts, outages, Kueue) are
skipped there. The real cluster needs a Ready node advertising `nvidia.com/gpu` and labelled
`nvidia.com/gpu.product=$K8S_TEST_GPU_PRODUCT`; on kind, for example:

    kubectl label node kind-control-plane nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3
    kubectl patch node kind-control-plane --subresource=status --type=json \\
        -p '[{"op": "add", "path": "/status/capacity/nvidia.com~1gpu", "value": "8"}]'
"""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
import urllib3
import yaml
from rest_framework.test import APIClient

from factory.adapters import BackendError, BackendState, BackendUnavailable, JobRejected
from factory.adapters.base import LOG_CHUNK_BYTES, normalise_image
from factory.adapters.kubernetes import KubernetesAdapter, KubernetesConnection
from factory.models import Cluster, Pool
from jobs import dispatch, lifecycle, submission
from jobs.choices import HOLDING_STATES, JobState
from jobs.models import Job
from jobs.tasks import cancel_backend_job, cancel_job, dispatch_jobs
from quotas import limits
from quotas.models import Quota
from tests.support import admit

from .k8s_fake import TOKEN, ApiError, FakeKubernetes

REAL = bool(os.environ.get("FACTORY_TEST_KUBECONFIG"))
GPU_PRODUCT = os.environ.get("K8S_TEST_GPU_PRODUCT", "NVIDIA-H100-80GB-HBM3")
IMAGE = os.environ.get("K8S_TEST_IMAGE", "busybox:1.36")
GPU_LABEL = "nvidia.com/gpu.product"


def repository(image: str) -> str:
    """The fully qualified repository of an image reference, without tag or digest."""
    name = normalise_image(image).partition("@")[0]
    head, colon, tag = name.rpartition(":")
    return head if colon and "/" not in tag else name


# The test clusters run NGC images and the test image's own repository.
ALLOWED_IMAGES = ["nvcr.io/nvidia/", repository(IMAGE)]

fake_only = pytest.mark.skipif(REAL, reason="needs the fake API server's controls")
pytestmark = pytest.mark.django_db


# --- the two ways to run: the fake, or a real cluster ---------------------------------------------


class FakeBackend:
    """Plays the job controller on the fake: a job's outcome is what the test says it is."""

    is_fake = True

    def __init__(self, fake: FakeKubernetes) -> None:
        self.fake = fake
        self.kubeconfig = fake.kubeconfig()
        self.namespace_prefix = "aif-"

    def started(self, job: Job) -> None:
        self.fake.start(job.external_id)

    def ended(self, job: Job, *, exit_code: int = 0, output: str = "") -> None:
        if self.fake.jobs[tuple(job.external_id.split("/"))]["status"].get("startTime") is None:
            self.fake.start(job.external_id)
        if exit_code == 0:
            self.fake.succeed(job.external_id, log=output)
        else:
            self.fake.fail(job.external_id, exit_code=exit_code, log=output)

    def cleanup(self) -> None:
        self.fake.stop_server()


class RealBackend:
    """Waits for a real cluster: a job's outcome is what its command does."""

    is_fake = False

    def __init__(self) -> None:
        from kubernetes import client, config

        path = Path(os.environ["FACTORY_TEST_KUBECONFIG"])
        self.kubeconfig = yaml.safe_load(path.read_text())
        self.api = config.new_client_from_config_dict(self.kubeconfig, persist_config=False)
        self.batch, self.core = client.BatchV1Api(self.api), client.CoreV1Api(self.api)
        self.namespace_prefix = f"aif-t{uuid.uuid4().hex[:6]}-"

    def _wait(self, job: Job, predicate, timeout: float = 180) -> None:
        namespace, name = job.external_id.split("/")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.batch.read_namespaced_job(name, namespace).status
            if predicate(status):
                return
            time.sleep(1)
        raise AssertionError(f"Job {job.external_id} did not get there in {timeout}s")

    def started(self, job: Job) -> None:
        self._wait(job, lambda s: (s.ready or 0) > 0 or _terminal(s))

    def ended(self, job: Job, *, exit_code: int = 0, output: str = "") -> None:
        self._wait(job, _terminal)

    def cleanup(self) -> None:
        for ns in self.core.list_namespace().items:
            if ns.metadata.name.startswith(self.namespace_prefix):
                self.core.delete_namespace(ns.metadata.name)


def _terminal(status) -> bool:
    return any(c.type in ("Complete", "Failed") and c.status == "True" for c in status.conditions or [])


@pytest.fixture
def fake() -> FakeKubernetes:
    if REAL:
        pytest.skip("needs the fake API server")
    server = FakeKubernetes().start_server()
    yield server
    server.stop_server()


@pytest.fixture
def backend(request):
    if REAL:
        real = RealBackend()
        yield real
        real.cleanup()
    else:
        yield FakeBackend(request.getfixturevalue("fake"))


@pytest.fixture
def k8s_cluster(db, h100, backend) -> Cluster:
    return make_cluster(backend.kubeconfig, h100, namespace_prefix=backend.namespace_prefix)


def make_cluster(kubeconfig: dict, gpu_type, slug: str = "k8s", **settings) -> Cluster:
    if "allow_any_image" not in settings:
        settings.setdefault("allowed_images", ALLOWED_IMAGES)
    connection = {"kubeconfig": yaml.safe_dump(kubeconfig), **settings}
    cluster = Cluster.objects.create(slug=slug, name="Kubernetes", kind="kubernetes", connection=connection)
    cluster.full_clean()
    Pool.objects.create(
        cluster=cluster, gpu_type=gpu_type, capacity=8, node_selector={GPU_LABEL: GPU_PRODUCT}
    )
    return cluster


@pytest.fixture
def k8s_job(k8s_cluster, tenant, owner, h100):
    def make(cluster: Cluster = k8s_cluster, **overrides) -> Job:
        spec = {
            "name": "k8s-test",
            "command": "echo hello",
            "image": IMAGE,
            "gpu_type": h100,
            "gpu_count": 1,
            "time_limit_minutes": 5,
            "cpus": 1,
            "memory_gb": 1,
        }
        spec.update(overrides)
        job, _ = submission.submit(tenant=tenant, owner=owner, spec=spec)
        admit(job, cluster)
        return job

    return make


def dispatched(job: Job) -> Job:
    dispatch_jobs([job.pk])
    job.refresh_from_db()
    return job


def synced(job: Job) -> Job:
    dispatch.sync_cluster(job.cluster)
    job.refresh_from_db()
    return job


def states(job: Job) -> list[str]:
    return list(job.events.filter(kind="state").values_list("state", flat=True))


POD_SECURITY_LABELS = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
    "pod-security.kubernetes.io/audit": "restricted",
    "pod-security.kubernetes.io/audit-version": "latest",
    "pod-security.kubernetes.io/warn": "restricted",
    "pod-security.kubernetes.io/warn-version": "latest",
}
NAMESPACE_LABELS = {
    "app.kubernetes.io/managed-by": "aifactory",
    "aifactory.io/tenant": "demo-lab",
    **POD_SECURITY_LABELS,
}
POD_SECURITY_CONTEXT = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "runAsGroup": 1000,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY_CONTEXT = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "privileged": False,
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}
DNS_EGRESS = {
    "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}}],
    "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
}
PUBLIC_EGRESS = {
    "to": [
        {
            "ipBlock": {
                "cidr": "0.0.0.0/0",
                "except": [
                    "10.0.0.0/8",
                    "100.64.0.0/10",
                    "169.254.0.0/16",
                    "172.16.0.0/12",
                    "192.168.0.0/16",
                ],
            }
        },
        {"ipBlock": {"cidr": "::/0", "except": ["fc00::/7", "fe80::/10"]}},
    ]
}


def policy_spec(*egress: dict) -> dict:
    """The portal's NetworkPolicy: traffic within the namespace, DNS, then `egress`."""
    return {
        "podSelector": {},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [{"from": [{"podSelector": {}}]}],
        "egress": [{"to": [{"podSelector": {}}]}, DNS_EGRESS, *egress],
    }


def labels_for(job: Job) -> dict[str, str]:
    return {
        "app.kubernetes.io/managed-by": "aifactory",
        "aifactory.io/job-uid": str(job.uid),
        "aifactory.io/dispatch-key": str(job.uid),
        "aifactory.io/tenant": "demo-lab",
        "aifactory.io/gpu-type": "h100",
    }


# --- submitting ----------------------------------------------------------------------------------


@fake_only
def test_submit_creates_the_namespace_and_sends_the_whole_job(k8s_job, fake):
    command = "python train.py --epochs 3 \"$DATA\" && echo 'done; $(not expanded)'"
    job = dispatched(
        k8s_job(
            name="train-7",
            command=command,
            gpu_count=2,
            cpus=8,
            memory_gb=64,
            time_limit_minutes=90,
            env={"DATA": "/data/set 1", "SEED": "42"},
            image="nvcr.io/nvidia/pytorch:24.05-py3",
        )
    )
    assert job.state == JobState.SUBMITTED
    assert job.external_id == f"aif-demo-lab/aif-{job.uid}"

    calls = [(r.method, r.path) for r in fake.calls()]
    assert calls == [
        ("POST", "/apis/batch/v1/namespaces/aif-demo-lab/jobs"),  # 404: no such namespace
        ("POST", "/api/v1/namespaces"),
        # Its isolation exists before its first pod does.
        ("POST", "/apis/networking.k8s.io/v1/namespaces/aif-demo-lab/networkpolicies"),
        ("POST", "/apis/batch/v1/namespaces/aif-demo-lab/jobs"),
    ]
    namespace = fake.calls("POST", "/api/v1/namespaces")[0].body
    assert namespace["metadata"] == {"name": "aif-demo-lab", "labels": NAMESPACE_LABELS}
    policy = fake.calls("POST", "/apis/networking.k8s.io/v1/namespaces/aif-demo-lab/networkpolicies")[0]
    assert policy.body == {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": "aifactory-tenant-isolation",
            "namespace": "aif-demo-lab",
            "labels": {"app.kubernetes.io/managed-by": "aifactory"},
        },
        "spec": policy_spec(PUBLIC_EGRESS),
    }
    created = fake.calls("POST", "/apis/batch/v1/namespaces/aif-demo-lab/jobs")[-1]
    assert created.query == {"fieldValidation": ["Strict"]}
    resources = {"nvidia.com/gpu": "2", "cpu": "8", "memory": "64Gi"}
    assert created.body == {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": f"aif-{job.uid}",
            "namespace": "aif-demo-lab",
            "labels": labels_for(job),
            "annotations": {"aifactory.io/job-name": "train-7"},
        },
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": 5400,
            "ttlSecondsAfterFinished": 3600,
            "template": {
                "metadata": {"labels": labels_for(job)},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "securityContext": POD_SECURITY_CONTEXT,
                    "nodeSelector": {GPU_LABEL: GPU_PRODUCT},
                    "containers": [
                        {
                            "name": "job",
                            "image": "nvcr.io/nvidia/pytorch:24.05-py3",
                            "command": ["/bin/sh", "-c", command],
                            "env": [
                                {"name": "DATA", "value": "/data/set 1"},
                                {"name": "SEED", "value": "42"},
                                {"name": "FACTORY_JOB_UID", "value": str(job.uid)},
                                {"name": "FACTORY_JOB_NAME", "value": "train-7"},
                            ],
                            "resources": {"requests": resources, "limits": resources},
                            "securityContext": CONTAINER_SECURITY_CONTEXT,
                        }
                    ],
                },
            },
        },
    }
    stored = fake.job(job.external_id)
    assert stored["spec"]["backoffLimit"] == 0  # ours, not the server's default of 6
    assert (
        stored["spec"]["template"]["metadata"]["labels"]["batch.kubernetes.io/job-name"] == f"aif-{job.uid}"
    )
    # The restricted profile has nothing to say about the pod, which its namespace enforces.
    assert fake.warnings == []
    fake.start(job.external_id)
    assert len(fake.pods_of(job.external_id)) == 1


def test_duplicate_submit_finds_the_same_job(k8s_job, k8s_cluster, backend):
    job = k8s_job()
    adapter = k8s_cluster.adapter()
    first = adapter.submit(job)
    second = adapter.submit(job)  # a retried dispatch: 409 AlreadyExists is success
    assert first == second
    Job.objects.filter(pk=job.pk).update(state=JobState.ADMITTED)  # a retry that raced
    job = dispatched(job)
    assert job.state == JobState.SUBMITTED and job.external_id == first
    listed = adapter.list_jobs()
    assert [j.external_id for j in listed].count(first) == 1
    if backend.is_fake:
        posts = backend.fake.calls("POST", "/apis/batch/v1/namespaces/aif-demo-lab/jobs")
        assert len(posts) == 4  # 404 (no namespace) and 201, then two 409s


def test_namespace_is_created_once_per_tenant(k8s_job, backend):
    first, second = dispatched(k8s_job(name="a")), dispatched(k8s_job(name="b"))
    namespace = first.external_id.split("/")[0]
    assert namespace == f"{backend.namespace_prefix}demo-lab"
    assert second.external_id.split("/")[0] == namespace
    if backend.is_fake:
        assert len(backend.fake.calls("POST", "/api/v1/namespaces")) == 1


def test_job_without_image_is_rejected_with_the_reason(k8s_job, backend):
    job = dispatched(k8s_job(image=""))
    assert job.state == JobState.REJECTED
    assert "container image is required" in job.reason
    if backend.is_fake:
        assert backend.fake.calls("POST") == []


@fake_only
def test_job_the_api_server_finds_invalid_is_rejected_with_its_message(k8s_job, k8s_cluster):
    Pool.objects.filter(cluster=k8s_cluster).update(node_selector={GPU_LABEL: "not a label value!"})
    job = dispatched(k8s_job())
    assert job.state == JobState.REJECTED
    assert f'Job.batch "aif-{job.uid}" is invalid: spec.template.spec.nodeSelector' in job.reason


# --- what a job may run, and as whom -------------------------------------------------------------


@fake_only
def test_a_root_pod_made_without_the_portal_is_refused_in_a_tenant_namespace(k8s_job, fake):
    """The namespace enforces the restricted profile on any pod, not only on the portal's."""
    dispatched(k8s_job())  # makes the tenant's namespace
    code, _, headers = raw(
        fake, "POST", "/apis/batch/v1/namespaces/aif-demo-lab/jobs", minimal_job("by-hand")
    )
    violations = (
        'allowPrivilegeEscalation != false (container "job" must set '
        "securityContext.allowPrivilegeEscalation=false), "
        'unrestricted capabilities (container "job" must set securityContext.capabilities.drop=["ALL"]), '
        'runAsNonRoot != true (pod or container "job" must set securityContext.runAsNonRoot=true), '
        'seccompProfile (pod or container "job" must set securityContext.seccompProfile.type to '
        '"RuntimeDefault" or "Localhost")'
    )
    assert code == 201  # a Job only gets a warning; its pods are what is refused
    assert headers["Warning"] == (
        '299 - "would violate PodSecurity \\"restricted:latest\\": ' + violations.replace('"', '\\"') + '"'
    )
    with pytest.raises(ApiError) as refused:
        fake.start("aif-demo-lab/by-hand")
    assert refused.value.code == 403
    assert refused.value.message.endswith(
        f'is forbidden: violates PodSecurity "restricted:latest": {violations}'
    )


def test_image_outside_the_allow_list_is_rejected_at_dispatch(k8s_job, backend):
    job = dispatched(k8s_job(image="evil.example.com/miner:1"))
    assert job.state == JobState.REJECTED
    assert job.reason.endswith(f"k8s runs only images from {', '.join(ALLOWED_IMAGES)}")
    if backend.is_fake:
        assert backend.fake.calls("POST") == []


@fake_only
def test_images_are_sent_fully_qualified_so_no_registry_search_picks_another(k8s_job, fake):
    job = dispatched(k8s_job(image=IMAGE))
    created = fake.calls("POST", "/apis/batch/v1/namespaces/aif-demo-lab/jobs")[-1].body
    assert created["spec"]["template"]["spec"]["containers"][0]["image"] == normalise_image(IMAGE)
    assert job.state == JobState.SUBMITTED


def test_a_cluster_without_an_allow_list_runs_no_image_and_names_the_setting(backend, k8s_job, h100):
    closed = make_cluster(backend.kubeconfig, h100, slug="k8s-closed", allowed_images=[])
    job = dispatched(k8s_job(cluster=closed))
    assert job.state == JobState.REJECTED
    assert "until an administrator sets its connection setting 'allowed_images'" in job.reason
    assert "'allow_any_image': true" in job.reason
    health = closed.adapter().health()
    assert health.ok and "runs no container images until 'allowed_images'" in health.message


def test_allow_any_image_runs_any_image(backend, k8s_job, h100):
    open_cluster = make_cluster(
        backend.kubeconfig,
        h100,
        slug="k8s-open",
        allow_any_image=True,
        namespace_prefix=backend.namespace_prefix,
    )
    job = dispatched(k8s_job(cluster=open_cluster, image="ghcr.io/my-lab/trainer:2"))
    assert job.state == JobState.SUBMITTED


@fake_only
def test_api_refuses_an_image_no_cluster_allows_and_creates_nothing(k8s_cluster, owner):
    api = APIClient()
    api.force_authenticate(owner)
    body = {"tenant": "demo-lab", "name": "x", "command": "true", "gpu_type": "h100", "gpu_count": 1}
    body["time_limit_minutes"] = 5
    response = api.post("/api/v1/jobs/", {**body, "image": "evil.example.com/miner:1"}, format="json")
    assert response.status_code == 400
    assert response.json() == {
        "image": [
            "No cluster that could run this job runs this image: "
            f"k8s runs only images from {', '.join(ALLOWED_IMAGES)}."
        ]
    }
    response = api.post("/api/v1/jobs/", body, format="json")  # no image at all
    assert response.json() == {
        "image": [
            "No cluster that could run this job runs this image: a container image is required to run on k8s."
        ]
    }
    assert Job.objects.count() == 0
    response = api.post("/api/v1/jobs/", {**body, "image": "nvcr.io/nvidia/pytorch:24.05-py3"}, format="json")
    assert response.status_code == 202, response.content


# --- tenant namespaces: Pod Security labels, isolation, GPU quota ----------------------------------


def test_mirrored_limits_hold_in_the_tenant_namespace(k8s_cluster, tenant, other_tenant, h100, backend):
    Quota.objects.create(tenant=tenant, gpu_type=h100, nominal=4, borrowing_limit=2)
    assert limits.mirror() == {"k8s": ["demo-lab"]}
    adapter = k8s_cluster.adapter()
    namespace = f"{backend.namespace_prefix}demo-lab"
    labels = adapter.core.read_namespace(namespace).metadata.labels
    assert {k: labels.get(k) for k in NAMESPACE_LABELS} == {**NAMESPACE_LABELS}
    quota = adapter.core.read_namespaced_resource_quota("aifactory-gpus", namespace)
    assert quota.spec.hard == {"requests.nvidia.com/gpu": "6"}  # nominal + borrowing limit
    policy = adapter.networking.read_namespaced_network_policy("aifactory-tenant-isolation", namespace)
    assert policy.spec.policy_types == ["Ingress", "Egress"]
    # A tenant without quota here gets no namespace; a second pass changes nothing.
    names = [ns.metadata.name for ns in adapter.core.list_namespace().items]
    assert f"{backend.namespace_prefix}other-lab" not in names
    assert limits.mirror() == {}


@fake_only
def test_a_new_tenant_namespace_is_made_with_its_quota_and_policy_in_the_apis_shapes(
    k8s_cluster, tenant, h100, fake
):
    Quota.objects.create(tenant=tenant, gpu_type=h100, nominal=4, borrowing_limit=2)
    assert k8s_cluster.adapter().apply_tenant_limits(limits.limits_for([tenant], [h100])) == ["demo-lab"]
    assert [(r.method, r.path, r.query) for r in fake.calls()] == [
        ("GET", "/api/v1/namespaces", {}),
        ("GET", "/api/v1/resourcequotas", {"fieldSelector": ["metadata.name=aifactory-gpus"]}),
        (
            "GET",
            "/apis/networking.k8s.io/v1/networkpolicies",
            {"fieldSelector": ["metadata.name=aifactory-tenant-isolation"]},
        ),
        ("POST", "/api/v1/namespaces", {}),
        ("POST", "/apis/networking.k8s.io/v1/namespaces/aif-demo-lab/networkpolicies", {}),
        ("POST", "/api/v1/namespaces/aif-demo-lab/resourcequotas", {}),
    ]
    assert fake.calls("POST", "/api/v1/namespaces/aif-demo-lab/resourcequotas")[0].body == {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {
            "name": "aifactory-gpus",
            "namespace": "aif-demo-lab",
            "labels": {"app.kubernetes.io/managed-by": "aifactory"},
        },
        "spec": {"hard": {"requests.nvidia.com/gpu": "6"}},
    }
    assert fake.namespaces["aif-demo-lab"]["metadata"]["labels"] == {
        **NAMESPACE_LABELS,
        "kubernetes.io/metadata.name": "aif-demo-lab",
    }
    assert fake.policies[("aif-demo-lab", "aifactory-tenant-isolation")]["spec"] == policy_spec(PUBLIC_EGRESS)


@fake_only
def test_existing_namespaces_are_brought_up_to_the_safeguards(k8s_cluster, tenant, h100, fake):
    """A namespace from before (labelled only with its tenant, with no policy or quota), and a
    policy someone loosened, are put right; the namespace's other labels stay."""
    fake.namespaces["aif-demo-lab"] = fake._namespace_object(
        "aif-demo-lab",
        {"app.kubernetes.io/managed-by": "aifactory", "aifactory.io/tenant": "demo-lab", "team": "nlp"},
    )
    loosened = {
        "metadata": {"name": "aifactory-tenant-isolation"},
        "spec": {"podSelector": {}, "ingress": [{}], "egress": [{}], "policyTypes": ["Ingress", "Egress"]},
    }
    code, created, _ = raw(
        fake, "POST", "/apis/networking.k8s.io/v1/namespaces/aif-demo-lab/networkpolicies", loosened
    )
    assert code == 201
    Quota.objects.create(tenant=tenant, gpu_type=h100, nominal=2, borrowing_limit=0)
    fake.reset_calls()
    assert limits.mirror() == {"k8s": ["demo-lab"]}
    writes = [(r.method, r.path) for r in fake.calls() if r.method != "GET"]
    assert writes == [
        ("PATCH", "/api/v1/namespaces/aif-demo-lab"),
        (
            "PUT",
            "/apis/networking.k8s.io/v1/namespaces/aif-demo-lab/networkpolicies/aifactory-tenant-isolation",
        ),
        ("POST", "/api/v1/namespaces/aif-demo-lab/resourcequotas"),
    ]
    assert fake.calls("PATCH")[0].headers["content-type"] == "application/strategic-merge-patch+json"
    assert fake.calls("PATCH")[0].body == {"metadata": {"labels": NAMESPACE_LABELS}}
    replaced = fake.calls("PUT")[0].body
    assert replaced["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]  # conditional
    assert replaced["spec"] == policy_spec(PUBLIC_EGRESS)
    assert fake.namespaces["aif-demo-lab"]["metadata"]["labels"]["team"] == "nlp"
    assert fake.policies[("aif-demo-lab", "aifactory-tenant-isolation")]["metadata"]["generation"] == 2
    fake.reset_calls()
    assert limits.mirror() == {}
    assert [r.method for r in fake.calls()] == ["GET", "GET", "GET"]  # everything as it should be


@fake_only
def test_a_changed_quota_replaces_the_namespace_quota_and_no_ceiling_removes_it(
    k8s_cluster, tenant, h100, a100, fake
):
    Pool.objects.create(cluster=k8s_cluster, gpu_type=a100, capacity=4, node_selector={GPU_LABEL: "A100"})
    h100_quota = Quota.objects.create(tenant=tenant, gpu_type=h100, nominal=4, borrowing_limit=0)
    Quota.objects.create(tenant=tenant, gpu_type=a100, nominal=1, borrowing_limit=1)
    limits.mirror()
    # Every GPU is nvidia.com/gpu to Kubernetes: the namespace holds the sum over the GPU types.
    assert fake.quota("aif-demo-lab", "aifactory-gpus")["spec"]["hard"] == {"requests.nvidia.com/gpu": "6"}
    version = fake.quotas[("aif-demo-lab", "aifactory-gpus")]["metadata"]["resourceVersion"]
    Quota.objects.filter(pk=h100_quota.pk).update(nominal=2)
    fake.reset_calls()
    assert limits.mirror() == {"k8s": ["demo-lab"]}
    replaced = fake.calls("PUT", "/api/v1/namespaces/aif-demo-lab/resourcequotas/aifactory-gpus")[0].body
    assert replaced["metadata"]["resourceVersion"] == version
    assert replaced["spec"] == {"hard": {"requests.nvidia.com/gpu": "4"}}
    Quota.objects.filter(pk=h100_quota.pk).update(borrowing_limit=None)  # may borrow without limit
    assert limits.mirror() == {"k8s": ["demo-lab"]}
    assert fake.calls("DELETE")[0].path == "/api/v1/namespaces/aif-demo-lab/resourcequotas/aifactory-gpus"
    assert fake.quotas == {}


@fake_only
def test_the_namespace_quota_holds_jobs_made_without_the_portal(k8s_job, k8s_cluster, tenant, h100, fake):
    Quota.objects.create(tenant=tenant, gpu_type=h100, nominal=2, borrowing_limit=0)
    limits.mirror()
    job = dispatched(k8s_job(gpu_count=2))
    fake.start(job.external_id)
    quota = fake.quota("aif-demo-lab", "aifactory-gpus")
    assert quota["status"] == {
        "hard": {"requests.nvidia.com/gpu": "2"},
        "used": {"requests.nvidia.com/gpu": "2"},
    }
    by_hand = minimal_job("by-hand")
    pod = by_hand["spec"]["template"]["spec"]
    pod["securityContext"] = POD_SECURITY_CONTEXT
    pod["containers"][0]["securityContext"] = CONTAINER_SECURITY_CONTEXT
    pod["containers"][0]["resources"] = {
        "requests": {"nvidia.com/gpu": "1"},
        "limits": {"nvidia.com/gpu": "1"},
    }
    assert raw(fake, "POST", "/apis/batch/v1/namespaces/aif-demo-lab/jobs", by_hand)[0] == 201
    with pytest.raises(
        ApiError,
        match=r"exceeded quota: aifactory-gpus, requested: requests.nvidia.com/gpu=1, "
        r"used: requests.nvidia.com/gpu=2, limited: requests.nvidia.com/gpu=2",
    ):
        fake.start("aif-demo-lab/by-hand")


@fake_only
def test_egress_settings_shape_the_network_policy(fake, tenant, h100):
    cluster = make_cluster(
        fake.kubeconfig(),
        h100,
        slug="k8s-private",
        public_egress=False,
        egress_cidrs=["10.20.0.0/16", "fd00:1::/64"],
    )
    Quota.objects.create(tenant=tenant, gpu_type=h100, nominal=1)
    cluster.adapter().apply_tenant_limits(limits.limits_for([tenant], [h100]))
    stored = fake.policies[("aif-demo-lab", "aifactory-tenant-isolation")]
    assert stored["spec"] == policy_spec(
        {"to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}, {"ipBlock": {"cidr": "fd00:1::/64"}}]}
    )
    closed = make_cluster(fake.kubeconfig(), h100, slug="k8s-closed", public_egress=False)
    assert closed.adapter().network_policy("x")["spec"] == policy_spec()  # its namespace and DNS only


@fake_only
def test_a_namespace_the_portal_cannot_isolate_is_not_left_for_jobs(k8s_job, fake):
    fake.forbid("create", "networkpolicies")
    job = k8s_job()
    dispatch_jobs([job.pk])  # not the job's fault: retried, then failed
    job.refresh_from_db()
    assert (job.state, job.dispatch_failures) == (JobState.ADMITTED, 1)
    assert "may not create NetworkPolicies on k8s; grant its account that permission" in job.reason
    assert "aif-demo-lab" not in fake.namespaces  # removed again: the next attempt starts over
    assert [r.method for r in fake.calls()] == ["POST", "POST", "POST", "DELETE"]
    assert fake.jobs == {}


@fake_only
def test_no_permission_for_quotas_leaves_the_cluster_for_the_next_pass(k8s_cluster, tenant, h100, fake):
    Quota.objects.create(tenant=tenant, gpu_type=h100, nominal=2)
    fake.forbid("list", "resourcequotas")
    assert limits.mirror() == {}  # logged and skipped, like an unreachable cluster
    with pytest.raises(BackendError, match="may not list ResourceQuotas on k8s; grant its account"):
        k8s_cluster.adapter().apply_tenant_limits(limits.limits_for([tenant], [h100]))


# --- following a job -----------------------------------------------------------------------------


def test_job_runs_to_success_with_real_times_and_its_log(k8s_job, backend):
    job = dispatched(k8s_job(command="echo hello; echo wörld; sleep 5"))  # runs long enough to be seen
    backend.started(job)
    job = synced(job)
    assert job.state == JobState.RUNNING and job.started_at is not None
    backend.ended(job, output="hello\nwörld\n")
    job = synced(job)
    assert (job.state, job.exit_code) == (JobState.SUCCEEDED, 0)
    assert job.started_at <= job.ended_at
    assert states(job) == ["pending", "admitted", "submitted", "running", "succeeded"]
    chunk = job.cluster.adapter().logs(job, 0)
    assert (chunk.text, chunk.complete) == ("hello\nwörld\n", True)


def test_failure_reports_the_pods_exit_code(k8s_job, backend):
    job = dispatched(k8s_job(command="echo about to fail; exit 3"))
    backend.ended(job, exit_code=3, output="about to fail\n")
    job = synced(job)
    assert (job.state, job.exit_code) == (JobState.FAILED, 3)
    assert states(job) == ["pending", "admitted", "submitted", "running", "failed"]
    assert job.started_at is not None and job.ended_at is not None


@fake_only
def test_an_evicted_pod_fails_the_job_as_a_platform_fault_not_billed(k8s_job, fake):
    job = dispatched(k8s_job(command="sleep 600"))
    fake.start(job.external_id)
    synced(job)
    fake.evict(job.external_id)
    job = synced(job)
    assert (job.state, job.exit_code, job.platform_fault) == (JobState.FAILED, 137, True)
    assert "evicted" in job.reason


def test_a_job_that_fails_by_itself_is_not_a_platform_fault(k8s_job, backend):
    job = dispatched(k8s_job(command="exit 3"))
    backend.ended(job, exit_code=3, output="")
    job = synced(job)
    assert (job.state, job.platform_fault) == (JobState.FAILED, False)


@fake_only
def test_deadline_exceeded_is_timed_out(k8s_job, fake):
    job = dispatched(k8s_job())
    fake.start(job.external_id)
    synced(job)
    fake.deadline_exceeded(job.external_id)
    job = synced(job)
    assert (job.state, job.reason) == (JobState.TIMED_OUT, "time limit reached")
    failed = next(c for c in fake.job(job.external_id)["status"]["conditions"] if c["type"] == "Failed")
    assert job.ended_at.strftime("%Y-%m-%dT%H:%M:%SZ") == failed["lastTransitionTime"]


def test_cancel_deletes_the_job_and_its_pods(k8s_job, backend, owner):
    job = dispatched(k8s_job(command="echo started; sleep 600"))
    backend.started(job)
    synced(job)
    assert lifecycle.cancel(job, owner)
    cancel_job(job.pk)
    job.refresh_from_db()
    assert job.state == JobState.CANCELLED
    if backend.is_fake:
        fake = backend.fake
        delete = fake.calls("DELETE")[-1]
        assert delete.path == f"/apis/batch/v1/namespaces/{job.external_id.replace('/', '/jobs/')}"
        assert delete.query["propagationPolicy"] == ["Background"]
        assert fake.pods_of(job.external_id) == []
    # Cancelling again finds nothing to delete and is fine.
    job.cluster.adapter().cancel(job)


@fake_only
def test_a_cancel_during_dispatch_deletes_the_job_that_dispatch_created(k8s_job, fake, owner):
    job = k8s_job(command="sleep 600")
    real_submit = KubernetesAdapter.submit

    def submit_then_user_cancels(self, j):
        external_id = real_submit(self, j)
        assert lifecycle.cancel(Job.objects.get(pk=j.pk), owner)
        return external_id

    with mock.patch.object(KubernetesAdapter, "submit", submit_then_user_cancels):
        dispatch_jobs([job.pk])
    job.refresh_from_db()
    assert (job.state, job.external_id) == (JobState.SUBMITTED, f"aif-demo-lab/aif-{job.uid}")
    assert job.cancel_requested_at is not None
    deletes = [call.path for call in fake.calls("DELETE")]
    assert deletes == [f"/apis/batch/v1/namespaces/aif-demo-lab/jobs/aif-{job.uid}"]


@fake_only
def test_preempting_a_job_whose_dispatcher_died_after_submitting_deletes_that_attempt(
    k8s_job, k8s_cluster, fake
):
    job = k8s_job(command="sleep 600")
    k8s_cluster.adapter().submit(job)  # submitted; the dispatcher died before recording it
    first_key = job.dispatch_key
    assert lifecycle.preempt(job, "preempted to return borrowed GPUs")
    cancel_backend_job(job.pk, k8s_cluster.pk, first_key, "")  # what preempt enqueues
    deletes = [call.path for call in fake.calls("DELETE")]
    assert deletes == [f"/apis/batch/v1/namespaces/aif-demo-lab/jobs/aif-{first_key}"]


@fake_only
def test_cancel_leaves_a_job_that_ended_first(k8s_job, fake):
    job = dispatched(k8s_job())
    fake.start(job.external_id)
    fake.succeed(job.external_id)
    job.cluster.adapter().cancel(job)
    assert fake.calls("DELETE") == []
    assert synced(job).state == JobState.SUCCEEDED


@fake_only
@pytest.mark.parametrize("outcome", ["succeed", "fail"])
def test_decided_job_stays_running_until_its_terminal_condition(k8s_job, fake, outcome):
    """Recent servers: SuccessCriteriaMet / FailureTarget first, while the pods terminate."""
    job = dispatched(k8s_job())
    fake.start(job.external_id)
    synced(job)
    if outcome == "succeed":
        fake.succeed(job.external_id, finished=False)
    else:
        fake.fail(job.external_id, exit_code=3, finished=False)
    assert synced(job).state == JobState.RUNNING
    fake.finish(job.external_id)
    job = synced(job)
    expected = (JobState.SUCCEEDED, 0) if outcome == "succeed" else (JobState.FAILED, 3)
    assert (job.state, job.exit_code) == expected


@fake_only
def test_old_servers_write_the_terminal_condition_in_one_step(k8s_job, fake):
    fake.delay_terminal_condition = False
    good, bad = dispatched(k8s_job(name="good")), dispatched(k8s_job(name="bad"))
    for job in (good, bad):
        fake.start(job.external_id)
    fake.succeed(good.external_id)
    fake.fail(bad.external_id, exit_code=3)
    types = [c["type"] for c in fake.job(good.external_id)["status"]["conditions"]]
    assert types == ["Complete"]
    assert (synced(good).state, good.exit_code) == (JobState.SUCCEEDED, 0)
    assert (synced(bad).state, bad.exit_code) == (JobState.FAILED, 3)


@fake_only
def test_pod_waiting_to_start_is_explained_and_not_running(k8s_job, fake):
    job = dispatched(k8s_job())
    fake.start(job.external_id, ready=False)
    job = synced(job)
    assert job.state == JobState.SUBMITTED
    assert job.reason == "waiting for its pod to start (scheduling, image pull)"
    assert job.cluster.adapter().logs(job, 0).text == ""  # 400: the container is waiting to start


SECRET = "hf_'$(id)`x`\"\nline two ünï"


@fake_only
def test_secrets_reach_the_pod_from_a_secret_its_job_owns_and_never_appear_in_the_job(k8s_job, fake, owner):
    job = dispatched(k8s_job(command="sleep 600", env={"EPOCHS": "3"}, secrets={"HF_TOKEN": SECRET}))
    assert job.state == JobState.SUBMITTED, job.reason
    namespace, name = job.external_id.split("/")
    sent = fake.job(job.external_id)
    assert "hf_" not in json.dumps(sent)
    container = sent["spec"]["template"]["spec"]["containers"][0]
    assert container["envFrom"] == [{"secretRef": {"name": name, "optional": False}}]
    assert {"name": "EPOCHS", "value": "3"} in container["env"]

    secret = fake.secrets[(namespace, name)]
    assert (secret["type"], secret["immutable"]) == ("Opaque", True)
    assert {k: base64.b64decode(v).decode() for k, v in secret["data"].items()} == {"HF_TOKEN": SECRET}
    owner_ref = {"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": sent["metadata"]["uid"]}
    assert secret["metadata"]["ownerReferences"] == [owner_ref]
    assert secret["metadata"]["labels"] == sent["metadata"]["labels"]

    # A retried dispatch makes neither twice: both answer 409 and the first ones stand.
    assert job.cluster.adapter().submit(job) == job.external_id
    posts = fake.calls("POST", f"/api/v1/namespaces/{namespace}/secrets")
    assert len(posts) == 2 and len(fake.secrets) == 1

    fake.start(job.external_id)
    assert synced(job).state == JobState.RUNNING
    assert lifecycle.cancel(job, owner)
    cancel_job(job.pk)
    assert (namespace, name) not in fake.secrets  # collected with its Job


@fake_only
def test_a_dispatch_that_died_between_job_and_secret_is_completed_by_the_retry(k8s_job, fake):
    job = k8s_job(secrets={"HF_TOKEN": SECRET})
    adapter = job.cluster.adapter()
    gone = mock.patch.object(KubernetesAdapter, "_create_secret", side_effect=BackendUnavailable("gone"))
    with gone, pytest.raises(BackendUnavailable):
        adapter.submit(job)
    external_id = adapter.find(job)
    fake.start(external_id)  # the kubelet holds the container until its Secret exists
    (pod,) = fake.pods_of(external_id)
    waiting = pod["status"]["containerStatuses"][0]["state"]["waiting"]
    assert waiting["reason"] == "CreateContainerConfigError"
    assert adapter.submit(job) == external_id
    assert list(fake.secrets) == [tuple(external_id.split("/"))]


@fake_only
def test_job_gone_from_the_cluster_is_lost(k8s_job, fake):
    job = dispatched(k8s_job())
    fake.start(job.external_id)
    synced(job)
    fake.expire(job.external_id)
    job = synced(job)
    assert job.state == JobState.FAILED
    assert job.reason.startswith("lost by the backend: the Job is gone from the cluster")


# --- Kueue ---------------------------------------------------------------------------------------


@pytest.fixture
def kueue_cluster(db, a100, fake) -> Cluster:
    return make_cluster(fake.kubeconfig(), a100, slug="k8s-kueue", kueue_queue="team-queue")


@fake_only
def test_kueue_job_waits_suspended_in_the_queue_then_runs(k8s_job, kueue_cluster, fake, a100):
    job = dispatched(k8s_job(cluster=kueue_cluster, gpu_type=a100))
    created = fake.calls("POST", "/apis/batch/v1/namespaces/aif-demo-lab/jobs")[-1].body
    assert created["spec"]["suspend"] is True
    assert created["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-queue"
    assert "kueue.x-k8s.io/queue-name" not in created["spec"]["template"]["metadata"]["labels"]
    job = synced(job)
    assert (job.state, job.reason) == (JobState.SUBMITTED, "waiting in the cluster's Kueue queue")
    fake.kueue_admit(job.external_id)
    job = synced(job)
    assert job.state == JobState.RUNNING and job.reason == ""


@fake_only
def test_kueue_preemption_sends_a_running_job_back_to_queued(k8s_job, kueue_cluster, fake, a100):
    job = dispatched(k8s_job(cluster=kueue_cluster, gpu_type=a100))
    fake.kueue_admit(job.external_id)
    assert synced(job).state == JobState.RUNNING
    fake.kueue_preempt(job.external_id)
    job = synced(job)
    assert job.state == JobState.SUBMITTED and job.state in HOLDING_STATES
    assert job.reason == "preempted by Kueue; waiting in the cluster's Kueue queue"
    assert job.events.filter(message__startswith="Requeued by the cluster: preempted by Kueue").count() == 1
    synced(job)  # the same report again changes nothing
    assert job.events.filter(message__startswith="Requeued by the cluster").count() == 1
    fake.kueue_admit(job.external_id)
    assert synced(job).state == JobState.RUNNING
    fake.succeed(job.external_id)
    job = synced(job)
    assert job.state == JobState.SUCCEEDED
    assert states(job) == ["pending", "admitted", "submitted", "running", "submitted", "running", "succeeded"]


# --- the cost of a sync, and outages -------------------------------------------------------------


@fake_only
def test_sync_makes_the_same_few_calls_for_any_number_of_jobs(k8s_job, k8s_cluster, fake):
    def calls_for_a_sync() -> list[tuple[str, str]]:
        fake.reset_calls()
        dispatch.sync_cluster(k8s_cluster)
        return [(r.method, r.path) for r in fake.calls()]

    jobs = [dispatched(k8s_job(name=f"j{i}")) for i in range(3)]
    assert calls_for_a_sync() == [("GET", "/apis/batch/v1/jobs")]
    jobs += [dispatched(k8s_job(name=f"j{i}")) for i in range(3, 30)]
    for job in jobs:
        fake.start(job.external_id)
    assert calls_for_a_sync() == [("GET", "/apis/batch/v1/jobs")]
    for i, job in enumerate(jobs[:12]):
        fake.fail(job.external_id, exit_code=i + 1)
    # Twelve failures: still one more call, for all their pods at once.
    assert calls_for_a_sync() == [("GET", "/apis/batch/v1/jobs"), ("GET", "/api/v1/pods")]
    listing = fake.calls("GET", "/apis/batch/v1/jobs")[-1]
    assert listing.query["labelSelector"] == ["app.kubernetes.io/managed-by=aifactory"]
    for i, job in enumerate(jobs[:12]):
        job.refresh_from_db()
        assert (job.state, job.exit_code) == (JobState.FAILED, i + 1)
    assert Job.objects.filter(state=JobState.RUNNING).count() == 18


@fake_only
def test_api_server_down_leaves_jobs_as_they_are(k8s_job, k8s_cluster, fake):
    running = dispatched(k8s_job(name="running"))
    fake.start(running.external_id)
    synced(running)
    waiting = k8s_job(name="waiting")
    for outage in (fake.unreachable, fake.outage):
        with outage():
            with pytest.raises(BackendUnavailable):
                dispatch.sync_cluster(k8s_cluster)
            with pytest.raises(BackendUnavailable):
                dispatch_jobs([waiting.pk])
            assert not k8s_cluster.adapter().health().ok
        running.refresh_from_db()
        waiting.refresh_from_db()
        assert running.state == JobState.RUNNING
        assert waiting.state == JobState.ADMITTED and "unreachable" in waiting.reason
    fake.succeed(running.external_id)
    assert synced(running).state == JobState.SUCCEEDED
    assert dispatched(waiting).state == JobState.SUBMITTED


@fake_only
def test_answer_missing_a_required_field_is_an_error_not_a_guess(k8s_job, k8s_cluster, fake):
    job = dispatched(k8s_job())
    fake.start(job.external_id)
    namespace, name = job.external_id.split("/")
    # A condition without its required `status`, as a broken server or proxy might send.
    fake.jobs[(namespace, name)]["status"]["conditions"] = [
        {"type": "Complete", "reason": "CompletionsReached"}
    ]
    with pytest.raises(BackendError, match="answered 'list Jobs' in an unexpected shape: status: "):
        dispatch.sync_cluster(k8s_cluster)
    job.refresh_from_db()
    assert job.state == JobState.SUBMITTED


@fake_only
def test_refused_credentials_and_permissions_are_clear_errors_without_secrets(k8s_job, fake, h100):
    job = k8s_job()
    fake.forbid("create", "jobs")
    dispatch_jobs([job.pk])  # neither transient nor the job's fault: retried a few times, then failed
    job.refresh_from_db()
    assert (job.state, job.dispatch_failures) == (JobState.ADMITTED, 1)
    assert "may not create Jobs on k8s; grant its account" in job.reason
    assert 'cannot create resource "jobs" in API group "batch"' in job.reason

    secret = "s3cr3t-token-that-must-not-leak"
    stranger = make_cluster(fake.kubeconfig(token=secret), h100, slug="k8s-wrong-token")
    health = stranger.adapter().health()
    assert not health.ok and "refused the credentials" in health.message
    assert secret not in health.message and TOKEN not in health.message


# --- logs and health -----------------------------------------------------------------------------


def test_logs_are_read_from_a_byte_offset(k8s_job, backend):
    text = "".join(f"line {i} — ünïcode\n" for i in range(6000))  # > one chunk, multi-byte
    command = 'i=0; while [ $i -lt 6000 ]; do echo "line $i — ünïcode"; i=$((i+1)); done'
    job = dispatched(k8s_job(command=command))
    backend.ended(job, output=text)
    job = synced(job)
    adapter = job.cluster.adapter()
    offset, pieces, complete = 0, [], False
    while not complete:
        chunk = adapter.logs(job, offset)
        assert chunk.next_offset - offset <= LOG_CHUNK_BYTES
        pieces.append(chunk.text)
        offset, complete = chunk.next_offset, chunk.complete
    assert "".join(pieces) == text and offset == len(text.encode())
    if backend.is_fake:
        reads = backend.fake.calls("GET")
        log_reads = [r for r in reads if r.path.endswith("/log")]
        assert log_reads[0].query["limitBytes"] == [str(LOG_CHUNK_BYTES)]
        assert log_reads[0].query["container"] == ["job"]


@fake_only
def test_health_sums_allocatable_gpus_per_pool_and_requested_gpus_in_use(k8s_job, k8s_cluster, fake, a100):
    Pool.objects.create(
        cluster=k8s_cluster, gpu_type=a100, capacity=4, node_selector={GPU_LABEL: "NVIDIA-A100-SXM4-80GB"}
    )
    fake.add_node("gpu-h100-1", {GPU_LABEL: GPU_PRODUCT}, gpus=8)
    fake.add_node("gpu-h100-2", {GPU_LABEL: GPU_PRODUCT}, gpus=8)
    fake.add_node("gpu-h100-3", {GPU_LABEL: GPU_PRODUCT}, gpus=8, ready=False)
    fake.add_node("gpu-a100-1", {GPU_LABEL: "NVIDIA-A100-SXM4-80GB"}, gpus=4, unschedulable=True)
    fake.add_node("cpu-1", {}, gpus=0)
    for name, gpus in (("big", 3), ("small", 2), ("done", 4)):
        job = dispatched(k8s_job(name=name, gpu_count=gpus))
        fake.start(job.external_id)
        if name == "done":
            fake.succeed(job.external_id)
    fake.reset_calls()
    health = k8s_cluster.adapter().health()
    assert health.ok
    assert {p.gpu_type: (p.capacity, p.in_use) for p in health.pools} == {"h100": (16, 5), "a100": (0, 0)}
    assert health.message == (
        "API server reachable; 3 of 5 node(s) ready; not ready or cordoned: gpu-a100-1, gpu-h100-3"
    )
    assert [r.path for r in fake.calls()] == ["/api/v1/nodes", "/apis/batch/v1/jobs"]


def test_health_is_ok_on_a_reachable_cluster(k8s_cluster):
    health = k8s_cluster.adapter().health()
    assert health.ok, health.message
    assert [p.gpu_type for p in health.pools] == ["h100"]


# --- the portal, end to end ----------------------------------------------------------------------


def test_portal_job_runs_on_kubernetes_and_its_log_is_served(k8s_cluster, tenant, owner, h100, backend):
    job, created = submission.submit(
        tenant=tenant,
        owner=owner,
        spec={
            "name": "e2e",
            "command": "echo from kubernetes",
            "image": IMAGE,
            "gpu_type": h100,
            "gpu_count": 1,
            "time_limit_minutes": 5,
        },
    )
    assert created and admit(job, k8s_cluster)
    dispatch_jobs([job.pk])
    job.refresh_from_db()
    assert job.state == JobState.SUBMITTED
    backend.started(job)
    if backend.is_fake:  # the fake's clock has seconds only: let the job have run a while
        status = backend.fake.jobs[tuple(job.external_id.split("/"))]["status"]
        status["startTime"] = (datetime.now(UTC) - timedelta(seconds=90)).strftime("%Y-%m-%dT%H:%M:%SZ")
    dispatch.sync_cluster(k8s_cluster)
    backend.ended(job, output="from kubernetes\n")
    dispatch.sync_cluster(k8s_cluster)
    job.refresh_from_db()
    assert job.state == JobState.SUCCEEDED
    api = APIClient()
    api.force_authenticate(owner)
    response = api.get(f"/api/v1/jobs/{job.pk}/logs/")
    assert response.status_code == 200
    assert response.json() == {
        "offset": 0,
        "next_offset": len(b"from kubernetes\n"),
        "text": "from kubernetes\n",
        "complete": True,
    }
    assert_metered(job)


def assert_metered(job) -> None:
    """Metered like any other job: its run is in the ledger, once."""
    from billing.metering import meter_finished
    from billing.models import UsageRecord

    meter_finished()  # here the periodic path; after a real commit the release signal does it
    meter_finished()
    line = UsageRecord.objects.get(job=job)
    assert line.kind == "usage" and line.gpu_seconds >= 0 and line.cluster_id == job.cluster_id


# --- the fake itself answers like an API server ---------------------------------------------------


def raw(
    fake: FakeKubernetes, method: str, path: str, body=None, content_type: str = "application/json"
) -> tuple[int, dict, dict]:
    response = urllib3.request(
        method,
        fake.url + path,
        body=json.dumps(body) if body is not None else None,
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": content_type},
        retries=False,
    )
    return response.status, response.json(), dict(response.headers)


def minimal_job(name: str = "x", **spec) -> dict:
    container = {"name": "job", "image": "busybox", "command": ["true"]}
    template = {"spec": {"restartPolicy": "Never", "containers": [container]}}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {"template": template, **spec},
    }


@fake_only
def test_fake_defaults_created_jobs_and_answers_errors_as_status_objects(fake):
    jobs = "/apis/batch/v1/namespaces/default/jobs"
    code, created, _ = raw(fake, "POST", jobs, minimal_job())
    assert code == 201 and created["status"] == {}
    assert (
        created["spec"]["backoffLimit"] == 6
        and created["spec"]["podReplacementPolicy"] == "TerminatingOrFailed"
    )
    assert created["metadata"]["labels"]["batch.kubernetes.io/job-name"] == "x"
    assert created["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] == "Always"
    assert raw(fake, "POST", jobs, minimal_job())[:2] == (
        409,
        {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": 'jobs.batch "x" already exists',
            "reason": "AlreadyExists",
            "details": {"name": "x", "group": "batch", "kind": "jobs"},
            "code": 409,
        },
    )
    code, status, _ = raw(fake, "POST", "/apis/batch/v1/namespaces/nowhere/jobs", minimal_job())
    assert (code, status["reason"], status["message"]) == (404, "NotFound", 'namespaces "nowhere" not found')
    broken = minimal_job("y")
    del broken["spec"]["template"]["spec"]["restartPolicy"]
    code, status, _ = raw(fake, "POST", jobs, broken)
    assert (code, status["message"]) == (
        422,
        'Job.batch "y" is invalid: spec.template.spec.restartPolicy: Required value: '
        'valid values: "OnFailure", "Never"',
    )
    assert status["details"]["causes"] == [
        {
            "reason": "FieldValueRequired",
            "message": 'Required value: valid values: "OnFailure", "Never"',
            "field": "spec.template.spec.restartPolicy",
        }
    ]
    code, status, _ = raw(fake, "POST", jobs, minimal_job("z", backoffLimit="0"))
    assert (code, status["reason"]) == (400, "BadRequest")
    assert (
        "cannot unmarshal string into Go struct field JobSpec.spec.backoffLimit of type int32"
        in status["message"]
    )
    code, status, _ = raw(fake, "POST", jobs + "?fieldValidation=Strict", minimal_job("z", bogus=1))
    assert (code, status["message"]) == (400, 'strict decoding error: unknown field "spec.bogus"')
    code, _, headers = raw(fake, "POST", jobs, minimal_job("z", bogus=1))
    assert code == 201 and headers["Warning"] == '299 - "unknown field \\"spec.bogus\\""'


@fake_only
def test_fake_orphans_pods_unless_told_to_propagate_the_delete(fake):
    jobs = "/apis/batch/v1/namespaces/default/jobs"
    for name in ("orphaned", "collected"):
        raw(fake, "POST", jobs, minimal_job(name))
        fake.start(f"default/{name}")
    code, status, headers = raw(fake, "DELETE", f"{jobs}/orphaned")
    assert code == 200 and "child pods are preserved by default" in headers["Warning"]
    assert len(fake.pods) == 2  # the orphans keep running
    code, status, headers = raw(fake, "DELETE", f"{jobs}/collected?propagationPolicy=Background")
    assert "Warning" not in headers
    assert [name.partition("-")[0] for _, name in fake.pods] == ["orphaned"]
    assert (status["status"], status["details"]["kind"], status["details"]["name"]) == (
        "Success",
        "jobs",
        "collected",
    )


@fake_only
def test_fake_validates_quotas_and_policies_as_the_api_server_does(fake):
    quotas = "/api/v1/namespaces/default/resourcequotas"
    bad = {"metadata": {"name": "q"}, "spec": {"hard": {"gpus": "1", "requests.nvidia.com/gpu": "1.5"}}}
    code, status, _ = raw(fake, "POST", quotas, bad)
    assert (code, status["message"]) == (
        422,
        'ResourceQuota "q" is invalid: [spec.hard[gpus]: Invalid value: "gpus": must be a standard resource '
        'for quota, spec.hard[requests.nvidia.com/gpu]: Invalid value: "1.5": must be an integer]',
    )
    good = {"metadata": {"name": "q"}, "spec": {"hard": {"requests.nvidia.com/gpu": "2"}}}
    code, created, _ = raw(fake, "POST", quotas, good)
    assert (code, created["status"]) == (201, {})  # the quota controller fills it in later
    stale = {**created, "metadata": {**created["metadata"], "resourceVersion": "1"}}
    code, status, _ = raw(fake, "PUT", f"{quotas}/q", stale)
    assert (code, status["reason"]) == (409, "Conflict")
    assert status["message"] == (
        'Operation cannot be fulfilled on resourcequotas "q": the object has been modified; please apply '
        "your changes to the latest version and try again"
    )
    code, deleted, _ = raw(fake, "DELETE", f"{quotas}/q")
    assert (code, deleted["kind"], deleted["metadata"]["name"]) == (200, "ResourceQuota", "q")

    policies = "/apis/networking.k8s.io/v1/namespaces/default/networkpolicies"
    peer = {"podSelector": {}, "ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/8"]}}
    bad = {
        "metadata": {"name": "p"},
        "spec": {"egress": [{"to": [peer, {}], "ports": [{"protocol": "ICMP"}]}]},
    }
    code, status, _ = raw(fake, "POST", policies, bad)
    assert code == 422
    assert [(c["field"], c["message"]) for c in status["details"]["causes"]] == [
        (
            "spec.egress[0].ports[0].protocol",
            'Unsupported value: "ICMP": supported values: "TCP", "UDP", "SCTP"',
        ),
        ("spec.egress[0].to[0]", "Forbidden: may not specify both ipBlock and another peer"),
        (
            "spec.egress[0].to[0].ipBlock.except[0]",
            'Invalid value: "11.0.0.0/8": must be a strict subset of `cidr`',
        ),
        ("spec.egress[0].to[1]", "Required value: must specify a peer"),
    ]
    code, created, _ = raw(
        fake, "POST", policies, {"metadata": {"name": "p"}, "spec": {"egress": [{"ports": [{"port": 53}]}]}}
    )
    assert code == 201 and created["metadata"]["generation"] == 1
    assert created["spec"] == {
        "podSelector": {},
        "policyTypes": ["Ingress", "Egress"],
        "egress": [{"ports": [{"port": 53, "protocol": "TCP"}]}],
    }
    code, status, _ = raw(fake, "DELETE", f"{policies}/p")
    assert (status["status"], status["details"]["group"], status["details"]["kind"]) == (
        "Success",
        "networking.k8s.io",
        "networkpolicies",
    )
    code, status, _ = raw(fake, "GET", "/api/v1/resourcequotas?fieldSelector=spec.hard%3D1")
    assert (code, status["message"]) == (
        400,
        '"spec.hard" is not a known field selector: only "metadata.name", "metadata.namespace"',
    )


@fake_only
def test_fake_patches_namespace_labels_as_the_api_server_does(fake):
    path = "/api/v1/namespaces/default"
    patch = {"metadata": {"labels": {"team": "nlp", "kubernetes.io/metadata.name": None}}}
    code, namespace, _ = raw(fake, "PATCH", path, patch, "application/strategic-merge-patch+json")
    assert code == 200  # the server keeps kubernetes.io/metadata.name whatever a patch says
    assert namespace["metadata"]["labels"] == {"team": "nlp", "kubernetes.io/metadata.name": "default"}
    patch = {"metadata": {"labels": {"team": None}}}
    code, namespace, _ = raw(fake, "PATCH", path, patch, "application/merge-patch+json")
    assert namespace["metadata"]["labels"] == {"kubernetes.io/metadata.name": "default"}
    code, status, _ = raw(fake, "PATCH", path, patch)  # plain JSON is not a patch
    assert (code, status["reason"]) == (415, "UnsupportedMediaType")
    bad = {"metadata": {"labels": {"team": "not a value"}}}
    assert raw(fake, "PATCH", path, bad, "application/merge-patch+json")[0] == 422
    replaced = {**namespace, "metadata": {**namespace["metadata"], "labels": {"a": "b"}}}
    code, namespace, _ = raw(fake, "PUT", path, replaced)
    assert code == 200 and namespace["metadata"]["labels"] == {
        "a": "b",
        "kubernetes.io/metadata.name": "default",
    }
    assert raw(fake, "PUT", path, replaced)[0] == 409  # its resourceVersion is stale now


# --- connection settings (no server needed) -------------------------------------------------------


def kubeconfig_text(**changes) -> str:
    config = FakeKubernetes().kubeconfig()
    config.update(changes)
    return yaml.safe_dump(config)


@pytest.mark.parametrize(
    ("connection", "message"),
    [
        ({}, "Give either 'kubeconfig'"),
        ({"kubeconfig": kubeconfig_text(), "in_cluster": True}, "Give either 'kubeconfig'"),
        ({"kubeconfig": "clusters: [\n  token: hunter2-secret"}, r"not valid YAML \(line"),
        ({"kubeconfig": "just text"}, "needs 'clusters', 'contexts' and 'users'"),
        ({"kubeconfig": kubeconfig_text(), "context": "other"}, "no context named 'other'"),
        ({"kubeconfig": kubeconfig_text(), "namespace_prefix": "Bad_"}, "namespace_prefix"),
        ({"kubeconfig": kubeconfig_text(), "ttl_seconds_after_finished": -1}, "ttl_seconds_after_finished"),
        ({"kubeconfig": kubeconfig_text(), "ttl_seconds_after_finished": "1h"}, "wrong type"),
        ({"kubeconfig": kubeconfig_text(), "kueue_queue": "Team Queue"}, "kueue_queue"),
        ({"kubeconfig": kubeconfig_text(), "token": "x"}, "Unknown connection setting"),
        ({"kubeconfig": kubeconfig_text(), "allowed_images": ["nvidia/"]}, "Entry 1 of .*'allowed_images'"),
        ({"kubeconfig": kubeconfig_text(), "allowed_images": ["nvcr.io/", "ghcr.io/My Lab/"]}, "Entry 2 of"),
        ({"kubeconfig": kubeconfig_text(), "allowed_images": ["index.docker.io/"]}, "'allowed_images'"),
        (
            {"kubeconfig": kubeconfig_text(), "allowed_images": "nvcr.io/"},
            "'allowed_images' has the wrong type",
        ),
        (
            {"kubeconfig": kubeconfig_text(), "allowed_images": ["nvcr.io/"], "allow_any_image": True},
            "not both",
        ),
        (
            {"kubeconfig": kubeconfig_text(), "run_as_user": 0},
            "'run_as_user' must be from 1 .* \\(not root\\)",
        ),
        ({"kubeconfig": kubeconfig_text(), "run_as_group": -1}, "'run_as_group'"),
        ({"kubeconfig": kubeconfig_text(), "egress_cidrs": ["10.0.0.1/8"]}, "'egress_cidrs'"),
        ({"kubeconfig": kubeconfig_text(), "egress_cidrs": ["anywhere"]}, "'egress_cidrs'"),
    ],
)
def test_connection_settings_are_checked_without_echoing_the_kubeconfig(connection, message):
    with pytest.raises(ValueError, match=message) as caught:
        KubernetesConnection.parse(connection)
    assert "hunter2" not in str(caught.value) and TOKEN not in str(caught.value)


def test_in_cluster_connection_and_defaults():
    conn = KubernetesConnection.parse({"in_cluster": True})
    assert (conn.namespace_prefix, conn.ttl_seconds_after_finished, conn.kueue_queue) == ("aif-", 3600, None)
    # No image runs until an administrator says which may; jobs run as UID/GID 1000.
    assert (conn.allowed_images, conn.allow_any_image) == ([], False)
    assert (conn.run_as_user, conn.run_as_group, conn.public_egress, conn.egress_cidrs) == (
        1000,
        1000,
        True,
        [],
    )


def test_long_tenant_slugs_make_distinct_valid_namespaces(db):
    cluster = Cluster(
        slug="k", kind="kubernetes", connection={"in_cluster": True, "namespace_prefix": "portal-"}
    )
    adapter = KubernetesAdapter(cluster)
    a = adapter.namespace_for(SimpleNamespace(slug="x" * 60 + "-a"))
    b = adapter.namespace_for(SimpleNamespace(slug="x" * 60 + "-b"))
    assert a != b and len(a) <= 63 and len(b) <= 63
    assert adapter.namespace_for(SimpleNamespace(slug="demo-lab")) == "portal-demo-lab"
    bare = KubernetesAdapter(
        Cluster(slug="k", kind="kubernetes", connection={"in_cluster": True, "namespace_prefix": ""})
    )
    with pytest.raises(JobRejected):
        bare.namespace_for(SimpleNamespace(slug="kube-system"))


def test_report_is_queued_until_the_job_has_started():
    """The mapping itself, for a Job the job controller has not looked at yet."""
    from factory.adapters.kubernetes import ListedJob, job_report

    listed = ListedJob.from_item({"metadata": {"name": "x", "namespace": "y"}, "status": {}})
    report = job_report("y/x", listed, kueue=False, seen_running=False)
    assert (report.state, report.reason) == (BackendState.QUEUED, "")
