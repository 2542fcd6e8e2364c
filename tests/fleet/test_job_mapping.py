"""Which job runs on a GPU, by the labels dcgm-exporter adds (Slurm's `hpc_job`, Kubernetes'
`pod`/`namespace`) and by `scontrol show job -d`'s GPU indexes."""

from __future__ import annotations

import pytest
from django.utils import timezone

from factory.adapters.slurm.cli import expand_hostlist, job_gpu_indexes, node_info
from factory.models import Cluster, Pool
from fleet.inventory import register_node
from fleet.models import Gpu
from fleet.scrape import scrape_cluster
from fleet.simulator import SimGpu, SimNode, gpu_uuid, render_node
from jobs.choices import JobState
from jobs.models import Job

pytestmark = pytest.mark.django_db


def running(make_job, cluster, external_id: str) -> Job:
    job = make_job()
    Job.objects.filter(pk=job.pk).update(
        state=JobState.RUNNING, cluster=cluster, external_id=external_id, started_at=timezone.now()
    )
    return job


def scrape(cluster, node: SimNode):
    return scrape_cluster(cluster, fetch=lambda url, timeout: render_node(node))


@pytest.mark.parametrize("kind", ["slurm", "kubernetes"])
def test_the_job_on_each_gpu_comes_from_the_exporters_labels(kind, make_job, h100, fast_rules):
    cluster = Cluster.objects.create(slug=kind, name=kind, kind=kind, region="local")
    Pool.objects.create(cluster=cluster, gpu_type=h100, capacity=4)
    node = SimNode("gpu7", [SimGpu(i, gpu_uuid("gpu7", i), "h100") for i in range(4)])
    if kind == "slurm":
        job = running(make_job, cluster, "4242")
        node.hpc_jobs = {2: "4242", 3: "9999"}  # 9999: a job the portal does not know
    else:
        job = running(make_job, cluster, "team-a/aif-0a1b2c3d-0000-4000-8000-000000000001")
        node.pods = {2: ("team-a", "aif-0a1b2c3d-0000-4000-8000-000000000001-x7k2p")}
    register_node(cluster, "gpu7", "http://gpu7:9400/metrics", h100)
    scrape(cluster, node)
    assert {g.index: g.job_id for g in Gpu.objects.filter(cluster=cluster)} == {
        0: None,
        1: None,
        2: job.pk,
        3: None,
    }


def test_scontrol_show_job_detail_gives_each_running_jobs_gpu_indexes():
    text = (
        "JobId=17 JobName=a JobState=RUNNING Reason=None NodeList=gpu[1-2]   "
        "Nodes=gpu[1-2] CPU_IDs=0-3 Mem=1024 GRES=gpu:h100:3(IDX:0-1,5) MinCPUsNode=1\n"
        "JobId=18 JobName=b JobState=PENDING Reason=Resources   "
        "Nodes=gpu3 CPU_IDs=0 Mem=0 GRES=gpu:h100:1(IDX:0)\n"
    )
    assert job_gpu_indexes(text) == {(node, index): "17" for node in ("gpu1", "gpu2") for index in (0, 1, 5)}
    assert expand_hostlist("gpu[01-02,10],cpu1") == ("gpu01", "gpu02", "gpu10", "cpu1")


def test_a_running_task_of_an_array_is_named_as_the_portal_knows_it():
    text = (
        "JobId=41 ArrayJobId=38 ArrayTaskId=3 ArrayTaskThrottle=2 JobName=a JobState=RUNNING   "
        "Nodes=gpu1 CPU_IDs=0 Mem=1024 GRES=gpu:h100:1(IDX:4)\n"
    )
    assert job_gpu_indexes(text) == {("gpu1", 4): "38_3"}


def test_a_drain_reason_with_spaces_is_read_whole():
    reason = "factory: XID 79 (GPU has fallen off the bus) on GPU 3"
    line = f"NodeName=gpu1 State=IDLE+DRAIN CPUs=16 Reason={reason} [aif@2026-11-29T12:00:00]"
    assert node_info(line) == {"State": "IDLE+DRAIN", "Reason": reason}
