"""Asking for a job on several nodes (a gang), and the requests no pool's nodes could ever hold:
each refused at submission with a message on the field that is wrong, nothing created.

Pools here have the node shape their backend reported (factory.models.Pool.record_shape, as a
health check records it; nothing asks a backend anything at submission)."""

from __future__ import annotations

import pytest

from factory.adapters.base import PoolHealth
from factory.choices import ClusterKind
from factory.models import Cluster, Pool
from jobs.models import Job
from tests.jobs.test_api import URL, body, client_for
from tests.jobs.test_views import valid_form

pytestmark = pytest.mark.django_db


@pytest.fixture
def slurm_pool(h100) -> Pool:
    """Two nodes of 8 h100, 16 CPUs and 16,000 MB each, as scontrol shows the dev cluster's."""
    cluster = Cluster.objects.create(slug="slurm-a", name="Slurm", kind=ClusterKind.SLURM, region="local")
    pool = Pool.objects.create(cluster=cluster, gpu_type=h100, capacity=16, partition="gang")
    pool.record_shape(
        PoolHealth("gang/h100", 16, 0, nodes=2, gpus_per_node=8, cpus_per_node=16, memory_mb_per_node=16000)
    )
    return pool


def gang(**overrides) -> dict:
    data = body(nodes=2, gpus_per_node=4, memory_gb=8, cpus=4)
    del data["gpu_count"]
    data.update(overrides)
    return data


def test_a_gang_is_submitted_with_its_shape(owner, slurm_pool):
    response = client_for(owner).post(URL, gang(), format="json")
    assert response.status_code == 202, response.content
    job = Job.objects.get()
    assert (job.nodes, job.gpus_per_node, job.gpu_count, job.cpus, job.memory_gb) == (2, 4, 8, 4, 8)
    shown = response.json()
    assert (shown["nodes"], shown["gpus_per_node"], shown["gpu_count"]) == (2, 4, 8)


def test_gpu_count_keeps_meaning_the_gpus_of_one_node(owner, slurm_pool):
    response = client_for(owner).post(URL, body(gpu_count=3, memory_gb=8), format="json")
    assert response.status_code == 202, response.content
    job = Job.objects.get()
    assert (job.nodes, job.gpus_per_node, job.gpu_count) == (1, 3, 3)


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"nodes": 0}, "nodes", "Ask for at least one node."),
        ({"nodes": 3}, "nodes", "Needs 3 nodes; slurm-a has 2 h100 node(s)."),
        ({"gpus_per_node": 9}, "gpus_per_node", "Needs 9 GPUs per node; h100 nodes of slurm-a have 8."),
        ({"cpus": 17}, "cpus", "Needs 17 CPUs per node; h100 nodes of slurm-a have 16."),
        ({"memory_gb": 16}, "memory_gb", "Needs 16 GB per node; h100 nodes of slurm-a have 15.6 GB."),
        ({"gpus_per_node": None}, "gpus_per_node", "This field is required."),
        ({"gpu_count": 6}, "gpu_count", "2 node(s) × 4 GPUs per node is 8 GPUs, not 6"),
    ],
)
def test_a_request_no_node_could_hold_is_a_field_error_and_creates_nothing(
    owner, slurm_pool, overrides, field, message
):
    data = {k: v for k, v in gang(**overrides).items() if v is not None}
    response = client_for(owner).post(URL, data, format="json")
    assert response.status_code == 400, response.content
    errors = response.json()
    assert set(errors) == {field} and errors[field][0].startswith(message), errors
    assert not Job.objects.exists()


def test_one_node_over_a_node_s_gpus_is_refused_on_gpu_count(owner, slurm_pool):
    response = client_for(owner).post(URL, body(gpu_count=9, memory_gb=8), format="json")
    assert response.status_code == 400
    assert response.json() == {"gpu_count": ["Needs 9 GPUs on one node; h100 nodes of slurm-a have 8."]}


def test_a_gang_on_a_backend_that_runs_one_node_jobs_only_is_refused(owner, cluster):
    """The local backend runs a job as one process on this host."""
    response = client_for(owner).post(URL, gang(), format="json")
    assert response.status_code == 400
    assert response.json() == {"nodes": ["Local runs one-node jobs only."]}
    assert not Job.objects.exists()


def test_a_gang_goes_where_it_fits_when_another_cluster_cannot_run_it(owner, cluster, slurm_pool):
    assert client_for(owner).post(URL, gang(), format="json").status_code == 202


def test_every_pool_s_reason_is_given_when_none_fits(owner, cluster, slurm_pool):
    response = client_for(owner).post(URL, gang(memory_gb=16), format="json")
    assert response.status_code == 400
    assert response.json() == {
        "nodes": ["Local runs one-node jobs only."],
        "memory_gb": ["Needs 16 GB per node; h100 nodes of slurm-a have 15.6 GB."],
    }


def test_the_form_asks_for_a_gang_and_says_what_does_not_fit(client, owner, tenant, h100, slurm_pool):
    client.force_login(owner)
    refused = client.post(
        "/jobs/new/", valid_form(tenant, h100, nodes=2, gpus_per_node=4, memory_gb=16, cpus=4)
    )
    assert refused.status_code == 400
    assert refused.context["form"].errors["memory_gb"] == [
        "Needs 16 GB per node; h100 nodes of slurm-a have 15.6 GB."
    ]
    assert not Job.objects.exists()
    accepted = client.post(
        "/jobs/new/", valid_form(tenant, h100, nodes=2, gpus_per_node=4, memory_gb=8, cpus=4)
    )
    assert accepted.status_code == 302
    job = Job.objects.get()
    assert (job.nodes, job.gpus_per_node, job.gpu_count) == (2, 4, 8)
    page = client.get(accepted["Location"]).content.decode()
    assert "2 nodes × 4 h100 (8 GPUs), 4 CPUs and 8 GB per node" in page


def test_a_new_shape_from_the_backend_is_used_at_once(owner, slurm_pool):
    api = client_for(owner)
    assert api.post(URL, gang(nodes=3), format="json").status_code == 400
    slurm_pool.record_shape(PoolHealth("gang/h100", 24, 0, nodes=3, gpus_per_node=8, cpus_per_node=16))
    slurm_pool.capacity = 24
    slurm_pool.save()
    assert api.post(URL, gang(nodes=3), format="json").status_code == 202


def test_the_job_page_shows_the_nodes_it_ran_on_and_a_log_per_rank(client, owner, slurm_pool):
    response = client_for(owner).post(URL, gang(), format="json")
    job = Job.objects.get(pk=response.json()["id"])
    job.record_nodes(("gpu2", "gpu3"))
    client.force_login(owner)
    page = client.get(f"/jobs/{job.pk}/?rank=1").content.decode()
    assert '<dd id="job-nodes">gpu2, gpu3</dd>' in page
    assert "Log of rank 1" in page and '<a href="?rank=0">0</a>' in page
    assert client_for(owner).get(f"{URL}{job.pk}/").json()["ran_on"] == ["gpu2", "gpu3"]
    api = client_for(owner)
    assert api.get(f"{URL}{job.pk}/logs/?rank=2").json() == {"rank": ["Give a rank from 0 to 1."]}
    assert api.get(f"{URL}{job.pk}/logs/?rank=1").status_code == 200
