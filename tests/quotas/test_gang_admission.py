"""Admission of jobs on several nodes: a gang is admitted only when all its nodes fit at once on
one cluster, and it counts as nodes × GPUs against quotas, budgets and fair share."""

from __future__ import annotations

from decimal import Decimal

import pytest

from factory.adapters.base import PoolHealth
from factory.choices import ClusterKind
from factory.models import Cluster, Pool
from jobs.choices import JobState
from quotas.admission import Snapshot, admit_pending
from quotas.models import Budget, Quota, Reservation

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def run_on_commit(django_capture_on_commit_callbacks):
    """Admission enqueues dispatch on commit; these tests look at admission only."""
    with django_capture_on_commit_callbacks():
        yield


@pytest.fixture
def gang_pool(cluster, h100) -> Pool:
    """Two nodes of 8 h100 on a Slurm cluster (its shape as a health check records it); the local
    cluster of the other tests is switched off."""
    Cluster.objects.filter(pk=cluster.pk).update(enabled=False)
    slurm = Cluster.objects.create(slug="slurm-a", name="Slurm", kind=ClusterKind.SLURM, region="local")
    pool = Pool.objects.create(cluster=slurm, gpu_type=h100, capacity=16, partition="gang")
    pool.record_shape(
        PoolHealth("gang/h100", 16, 0, nodes=2, gpus_per_node=8, cpus_per_node=16, memory_mb_per_node=16000)
    )
    return pool


@pytest.fixture
def quota(tenant, h100) -> Quota:
    return Quota.objects.create(tenant=tenant, gpu_type=h100, nominal=16, borrowing_limit=0)


def gang(make_job, nodes: int, per_node: int, **overrides):
    spec = {"memory_gb": 8, "cpus": 2, "time_limit_minutes": 60, **overrides}
    return make_job(nodes=nodes, gpus_per_node=per_node, gpu_count=None, **spec)


def state(job) -> tuple[str, str]:
    job.refresh_from_db()
    return job.state, job.reason


def test_a_gang_waits_until_all_its_nodes_are_free_at_once(make_job, gang_pool, quota):
    small = [make_job(name=f"small{i}", gpu_count=2, memory_gb=8) for i in range(2)]
    assert admit_pending().admitted == 2  # both on one node (best fit): the other stays whole
    wide = gang(make_job, 2, 6, name="wide")
    narrow = gang(make_job, 2, 4, name="narrow")
    result = admit_pending()
    # 12 GPUs are free, but only one node has 6 of them: the wide gang takes nothing.
    assert state(wide) == (
        JobState.PENDING,
        "no cluster has 2 node(s) with 6 free h100 each: 1 on slurm-a (4 of 16 in use on slurm-a)",
    )
    assert result.admitted == 1 and state(narrow)[0] == JobState.ADMITTED
    assert not Reservation.objects.filter(job=wide).exists()
    assert narrow.events.filter(message="Admitted: 2 nodes × 4 h100 on slurm-a (least loaded)").exists()
    for job in [*small, narrow]:
        job.refresh_from_db()
        assert job.mark_submitted("x") and job.finish(JobState.SUCCEEDED, exit_code=0)
    assert admit_pending().admitted == 1 and state(wide)[0] == JobState.ADMITTED


def test_held_gangs_are_counted_on_whole_nodes_in_the_next_pass(make_job, gang_pool, quota):
    first = gang(make_job, 2, 5, name="first")
    assert admit_pending().admitted == 1
    # A new pass reads the held gang back from the database: 3 free on each node, so a one-node
    # job of 4 cannot go, one of 3 can.
    four, three = (
        make_job(name="four", gpu_count=4, memory_gb=8),
        make_job(name="three", gpu_count=3, memory_gb=8),
    )
    assert admit_pending().admitted == 1
    assert state(four)[0] == JobState.PENDING and state(three)[0] == JobState.ADMITTED
    assert state(first)[0] == JobState.ADMITTED


def test_a_gang_counts_nodes_times_gpus_against_the_quota(make_job, tenant, h100, gang_pool):
    Quota.objects.create(tenant=tenant, gpu_type=h100, nominal=8, borrowing_limit=0)
    job = gang(make_job, 2, 4)
    late = make_job(name="late", gpu_count=1, memory_gb=8)
    assert admit_pending().admitted == 1
    reservation = Reservation.objects.get(job=job)
    assert reservation.gpus == 8 and reservation.reserved_gpu_hours == Decimal("8")  # 60 min
    assert state(late) == (JobState.PENDING, "tenant quota h100: 8 of 8 in use, borrowing limit reached")
    assert Snapshot().share(tenant.pk, h100.pk) == 1.0


def test_a_gang_counts_nodes_times_gpus_against_the_budget(make_job, tenant, gang_pool, quota):
    Budget.objects.create(tenant=tenant, gpu_hours_per_month=Decimal("7"), hard=True)
    job = gang(make_job, 2, 4)  # 8 GPUs × 1 h
    admit_pending()
    assert state(job) == (JobState.PENDING, "budget: 7 GPU-h left, job needs 8")


def test_a_gang_never_goes_to_a_backend_that_runs_one_node_jobs_only(make_job, cluster, h100, tenant):
    """The local backend gets no gangs, whatever its capacity (submission refuses them too; this is
    for a job that was accepted while another cluster could run it)."""
    Quota.objects.create(tenant=tenant, gpu_type=h100, nominal=4)
    slurm = Cluster.objects.create(slug="slurm-a", name="Slurm", kind=ClusterKind.SLURM, region="local")
    Pool.objects.create(cluster=slurm, gpu_type=h100, capacity=8, partition="gang")
    job = gang(make_job, 2, 2)
    Cluster.objects.filter(pk=slurm.pk).update(draining=True)
    admit_pending()
    assert state(job) == (JobState.PENDING, "no cluster accepting jobs has 2 nodes × 2 h100 nodes")


def test_the_estimate_says_whether_a_gang_is_placed_now(make_job, tenant, owner, h100, gang_pool, quota):
    from datetime import date

    from billing.models import RateCard
    from quotas.estimate import estimate

    RateCard.objects.create(
        gpu_type=h100, currency="EUR", price_per_gpu_hour=Decimal("2.50"), effective_from=date(2026, 1, 1)
    )
    spec = {"gpu_type": h100, "gpu_count": 12, "nodes": 2, "gpus_per_node": 6, "time_limit_minutes": 60}
    make_job(name="small", gpu_count=4, memory_gb=8)
    admit_pending()  # 4 of one node's 8 GPUs in use: 12 GPUs free, but not 6 on each of 2 nodes
    result = estimate(tenant, owner, spec)
    assert result.cost == Decimal("30.00")  # 12 GPU-h
    assert not result.admits_now
    assert "2 node(s) with 6 free h100 each" in result.admission
