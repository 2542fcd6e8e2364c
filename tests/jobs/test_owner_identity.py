"""Clusters that run each job as its owner's POSIX account (Slurm) need the owner to have one: a
user without one is told so when they submit, on the form and in the API, if no other cluster
could run the job. (Dispatch refuses such a job too: tests/integration/test_slurm.py.)"""

from __future__ import annotations

import pytest

from factory.choices import ClusterKind
from factory.models import Cluster, Pool
from jobs.models import Job
from tests.jobs.test_api import URL, body, client_for
from tests.jobs.test_views import valid_form

pytestmark = pytest.mark.django_db

NO_POSIX_ACCOUNT = "they run each job as its owner's own POSIX account; none is set for you yet"


@pytest.fixture
def slurm_cluster(h100) -> Cluster:
    """8 h100 on a Slurm cluster in region eu (nothing asks Slurm anything at submission)."""
    cluster = Cluster.objects.create(slug="slurm", name="Slurm", kind=ClusterKind.SLURM, region="eu")
    Pool.objects.create(cluster=cluster, gpu_type=h100, capacity=8, partition="gpu")
    return cluster


def test_the_form_tells_a_user_without_a_posix_account_and_creates_nothing(
    client, teammate, tenant, h100, slurm_cluster
):
    client.force_login(teammate)
    response = client.post("/jobs/new/", valid_form(tenant, h100))
    assert response.status_code == 400
    errors = response.context["form"].errors["gpu_type"]
    assert any(NO_POSIX_ACCOUNT in error for error in errors), errors
    assert "Ask a platform admin to set yours." in response.content.decode()
    assert not Job.objects.exists()


def test_the_api_gives_a_user_without_a_posix_account_a_field_error_and_creates_nothing(
    teammate, slurm_cluster
):
    response = client_for(teammate).post(URL, body(), format="json")
    assert response.status_code == 400
    assert NO_POSIX_ACCOUNT in response.json()["gpu_type"][0]
    assert not Job.objects.exists()


def test_a_user_with_a_posix_account_submits_to_slurm(client, owner, tenant, h100, slurm_cluster):
    assert client_for(owner).post(URL, body(), format="json").status_code == 202
    client.force_login(owner)
    assert client.post("/jobs/new/", valid_form(tenant, h100)).status_code == 302
    assert Job.objects.count() == 2


def test_without_one_a_job_that_another_cluster_could_run_is_accepted(
    teammate, tenant, cluster, slurm_cluster
):
    api = client_for(teammate)
    assert api.post(URL, body(gpu_count=4), format="json").status_code == 202  # fits the local cluster too
    only_slurm = api.post(URL, body(gpu_count=5), format="json")  # fits only the Slurm one
    assert only_slurm.status_code == 400 and "gpu_type" in only_slurm.json()
    tenant.regions = ["eu"]  # the local cluster is in region "local": out of the tenant's reach
    tenant.save()
    assert api.post(URL, body(gpu_count=1), format="json").status_code == 400
    assert Job.objects.count() == 1
