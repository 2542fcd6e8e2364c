"""Jobs on several nodes at once, and jobs that fit no node, on the real Slurm of
scripts/slurm-dev-cluster (see tests/integration/test_slurm.py for its layout and for how the
adapter's tools run as the portal's own account)."""

from __future__ import annotations

import pytest

from factory.tasks import refresh_health
from jobs.models import Job
from tests.jobs.test_api import URL, body, client_for

from . import test_slurm

pytestmark = [pytest.mark.slurm, pytest.mark.django_db]

# The Slurm fixtures of test_slurm.py, used here as they are there.
as_the_portal_account = test_slurm.as_the_portal_account
shared_dir = test_slurm.shared_dir
slurm_cluster = test_slurm.slurm_cluster


def test_a_job_asking_more_memory_than_any_node_has_is_refused_at_submission(slurm_cluster, owner, h100):
    """The form's default of 16 GB on nodes of 16,000 MB: Slurm would refuse it ("Memory
    specification can not be satisfied") after the portal admitted it. The portal reads the nodes'
    memory from Slurm with the cluster's health and refuses it at once, saying why."""
    refresh_health(slurm_cluster)
    api = client_for(owner)
    response = api.post(URL, body(gpu_count=1, memory_gb=16), format="json")
    assert response.status_code == 400, response.content
    assert response.json()["memory_gb"] == ["Needs 16 GB per node; h100 nodes of slurm-local have 15.6 GB."]
    assert not Job.objects.exists()
    assert api.post(URL, body(gpu_count=1, memory_gb=15), format="json").status_code == 202
