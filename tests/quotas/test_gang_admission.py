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


# --- GPUs out of service: a node with a failed or drained GPU is not a whole node ----------------


@pytest.fixture
def three_nodes(gang_pool) -> Pool:
    """The gang pool grown to three nodes of 8 h100 (n1, n2, n3), as the fleet app knows them."""
    from fleet.models import Gpu, Node

    Pool.objects.filter(pk=gang_pool.pk).update(capacity=24, node_count=3)
    for name in ("n1", "n2", "n3"):
        node = Node.objects.create(
            cluster=gang_pool.cluster, name=name, gpu_type=gang_pool.gpu_type, exporter_url="http://x/"
        )
        Gpu.objects.bulk_create(
            Gpu(
                node=node, cluster=gang_pool.cluster, gpu_type=gang_pool.gpu_type, index=i, uuid=f"{name}-{i}"
            )
            for i in range(8)
        )
    return gang_pool


def test_a_node_with_a_failed_gpu_is_not_a_whole_node_for_a_gang(make_job, three_nodes, tenant, h100):
    """One GPU failed on each of two nodes (their drains not made yet, say the backend refused
    them): 22 GPUs are in service, but only one node has all 8."""
    from fleet.choices import Health
    from fleet.models import Gpu

    Quota.objects.create(tenant=tenant, gpu_type=h100, nominal=24, borrowing_limit=0)
    Gpu.objects.filter(uuid__in=["n1-3", "n2-5"]).update(health=Health.FAILED)
    eights = gang(make_job, 2, 8, name="eights")
    assert admit_pending().admitted == 0
    assert state(eights) == (
        JobState.PENDING,
        "no cluster has 2 node(s) with 8 free h100 each: 1 on slurm-a (0 of 22 in use on slurm-a)",
    )
    sevens = gang(make_job, 3, 7, name="sevens")
    assert admit_pending().admitted == 1 and state(sevens)[0] == JobState.ADMITTED


def test_a_drained_node_leaves_no_room_for_a_job_on_the_others(make_job, three_nodes, tenant, h100):
    """Node n1 drained by the portal: two jobs of 7 fill n2 and n3 but for one GPU each, so no
    node has 2 free GPUs, although the pool's 16 GPUs in service have 2 free."""
    from fleet.models import Node

    Quota.objects.create(tenant=tenant, gpu_type=h100, nominal=24, borrowing_limit=0)
    Node.objects.filter(name="n1").update(drained_by_portal=True, drain_reason="factory: XID 79")
    sevens = [make_job(name=f"seven{i}", gpu_count=7, memory_gb=8) for i in range(2)]
    assert admit_pending().admitted == 2
    two = make_job(name="two", gpu_count=2, memory_gb=8)
    assert admit_pending().admitted == 0
    assert state(two) == (
        JobState.PENDING,
        "no cluster has 1 node(s) with 2 free h100 each: 0 on slurm-a (14 of 16 in use on slurm-a)",
    )
    assert all(state(job)[0] == JobState.ADMITTED for job in sevens)


# --- topology: a gang under one switch where one has room ---------------------------------------


def two_switches(cluster_slug: str, h100) -> Pool:
    """A Slurm pool of five nodes of 8 h100: a1, a2 under leaf switch leafA, b1-b3 under leafB,
    as a health check records them from sinfo and `scontrol show topology`."""
    slurm = Cluster.objects.create(slug=cluster_slug, name="Slurm", kind=ClusterKind.SLURM, region="local")
    pool = Pool.objects.create(cluster=slurm, gpu_type=h100, capacity=40, partition="gpu")
    pool.record_shape(
        PoolHealth(
            "gpu/h100",
            40,
            0,
            nodes=5,
            gpus_per_node=8,
            cpus_per_node=16,
            memory_mb_per_node=16000,
            topology_level="switch",
            domains={"leafA": ("a1", "a2"), "leafB": ("b1", "b2", "b3")},
        )
    )
    return pool


@pytest.fixture
def switched_pool(cluster, h100) -> Pool:
    Cluster.objects.filter(pk=cluster.pk).update(enabled=False)
    return two_switches("slurm-t", h100)


@pytest.fixture
def big_quota(tenant, h100) -> Quota:
    return Quota.objects.create(tenant=tenant, gpu_type=h100, nominal=80, borrowing_limit=0)


def test_a_gang_goes_under_the_one_switch_that_fits_it_most_tightly(make_job, switched_pool, big_quota):
    pair = gang(make_job, 2, 8, name="pair")
    assert admit_pending().admitted == 1
    pair.refresh_from_db()
    # Both switches have room for 2 nodes; leafA has just that, so leafB stays whole for 3.
    assert pair.topology_domain == "leafA"
    assert pair.events.filter(
        message="Admitted: 2 nodes × 8 h100 on slurm-t (least loaded), under one switch: leafA"
    ).exists()
    trio = gang(make_job, 3, 8, name="trio")
    assert admit_pending().admitted == 1
    trio.refresh_from_db()
    assert trio.topology_domain == "leafB"


def test_a_gang_no_switch_has_room_for_goes_over_several(make_job, switched_pool, big_quota):
    four = gang(make_job, 4, 8, name="four")
    assert admit_pending().admitted == 1
    four.refresh_from_db()
    assert four.topology_domain == ""  # Slurm is not asked to keep it under one switch
    assert four.events.filter(
        message="Admitted: 4 nodes × 8 h100 on slurm-t (least loaded), over several of its switch domains: "
        "no one switch has 4 free nodes"
    ).exists()


def test_a_pool_with_room_under_one_switch_wins_over_a_less_loaded_one(
    make_job, switched_pool, h100, big_quota
):
    """slurm-t is half busy (leafB's nodes), slurm-u idle but with its 4 nodes under 4 switches."""
    spread = Cluster.objects.create(slug="slurm-u", name="Slurm U", kind=ClusterKind.SLURM, region="local")
    pool = Pool.objects.create(cluster=spread, gpu_type=h100, capacity=32, partition="gpu")
    pool.record_shape(
        PoolHealth(
            "gpu/h100",
            32,
            0,
            nodes=4,
            gpus_per_node=8,
            topology_level="switch",
            domains={f"leaf{i}": (f"u{i}",) for i in range(4)},
        )
    )
    busy = gang(make_job, 3, 8, name="busy")
    admit_pending()
    busy.refresh_from_db()
    assert (busy.cluster.slug, busy.topology_domain) == ("slurm-t", "leafB")
    pair = gang(make_job, 2, 8, name="pair")
    assert admit_pending().admitted == 1
    pair.refresh_from_db()
    assert (pair.cluster.slug, pair.topology_domain) == ("slurm-t", "leafA")


def test_held_jobs_are_counted_on_the_switch_of_the_nodes_they_run_on(make_job, switched_pool, big_quota):
    """A running gang on b1 and b2 (as Slurm reported its nodes) leaves leafB one free node, not
    three: a gang of 3 has no switch to itself, although admission alone would have put the first
    gang under leafA."""
    running = gang(make_job, 2, 8, name="running")
    assert admit_pending().admitted == 1
    running.refresh_from_db()
    assert running.mark_submitted("1") and running.mark_running(None)
    running.record_nodes(["b1", "b2"])
    trio = gang(make_job, 3, 8, name="trio")
    assert admit_pending().admitted == 1
    trio.refresh_from_db()
    assert trio.topology_domain == ""


def test_a_gang_sent_back_to_pending_forgets_its_domain(make_job, switched_pool, big_quota):
    from jobs import lifecycle

    pair = gang(make_job, 2, 8, name="pair")
    admit_pending()
    pair.refresh_from_db()
    assert pair.topology_domain == "leafA" and lifecycle.preempt(pair, "preempted")
    pair.refresh_from_db()
    assert (pair.state, pair.cluster, pair.topology_domain) == (JobState.PENDING, None, "")
