from __future__ import annotations

import threading
import time
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.utils import timezone

from factory.models import Cluster, Membership, Pool, Tenant
from factory.months import month_of
from jobs import lifecycle
from jobs.choices import HOLDING_STATES, JobState
from jobs.models import Job, JobEvent
from quotas import admission
from quotas.admission import PREEMPTED_REASON, admit_pending
from quotas.models import Budget, Quota, Reservation
from quotas.settlement import settle_released

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def run_on_commit(django_capture_on_commit_callbacks):
    """Admission enqueues dispatch on commit; these tests look at admission only."""
    with django_capture_on_commit_callbacks():
        yield


def held(gpu_type, tenant=None) -> int:
    jobs = Job.objects.filter(state__in=HOLDING_STATES, gpu_type=gpu_type)
    if tenant is not None:
        jobs = jobs.filter(tenant=tenant)
    return sum(jobs.values_list("gpu_count", flat=True))


def refreshed(*jobs):
    for job in jobs:
        job.refresh_from_db()
    return jobs


def finish(job, minutes: float):
    start = timezone.now() - timedelta(minutes=minutes)
    job.mark_submitted("x")
    job.finish(JobState.SUCCEEDED, exit_code=0, started_at=start, ended_at=timezone.now())


@pytest.fixture
def team(db, django_user_model):
    """A second tenant with its own member."""
    tenant = Tenant.objects.create(slug="team-b", name="Team B")
    user = django_user_model.objects.create_user("bob", password="pw-bob")
    Membership.objects.create(user=user, tenant=tenant)
    return tenant, user


def test_admission_fills_the_pool_and_explains_the_wait(make_job, h100, quotas):
    jobs = [make_job(name=f"j{i}", gpu_count=2) for i in range(3)]
    assert admit_pending().admitted == 2
    refreshed(*jobs)
    assert [j.state for j in jobs] == [JobState.ADMITTED, JobState.ADMITTED, JobState.PENDING]
    assert jobs[2].reason == "tenant quota h100: 4 of 4 in use, no idle GPUs to borrow"
    assert jobs[0].cluster.slug == "local"
    assert Reservation.objects.count() == 2


def test_a_tenant_without_a_quota_row_cannot_use_the_gpu_type(make_job, cluster):
    job = make_job()
    admit_pending()
    job.refresh_from_db()
    assert (job.state, job.reason) == (JobState.PENDING, "tenant demo-lab has no h100 quota")


def test_per_job_and_per_user_caps(make_job, quotas, teammate):
    Quota.objects.filter(gpu_type__slug="h100").update(max_gpus_per_job=2, max_gpus_per_user=3)
    big = make_job(name="big", gpu_count=3)
    first = make_job(name="first", gpu_count=2)
    second = make_job(name="second", gpu_count=2)
    mate = make_job(name="mate", gpu_count=2, owner=teammate)
    admit_pending()
    refreshed(big, first, second, mate)
    assert big.reason == "asks for 3 h100; the tenant's limit per job is 2"
    assert first.state == JobState.ADMITTED and mate.state == JobState.ADMITTED
    assert second.reason == "per-user limit h100: 2 of 3 in use by the owner"


def test_borrowing_idle_gpus_within_the_borrowing_limit(make_job, tenant, team, h100, cluster):
    other, _ = team
    Quota.objects.create(tenant=tenant, gpu_type=h100, nominal=2, borrowing_limit=1)
    Quota.objects.create(tenant=other, gpu_type=h100, nominal=2)
    jobs = [make_job(name=f"j{i}") for i in range(4)]
    admit_pending()
    refreshed(*jobs)
    assert [j.state for j in jobs].count(JobState.ADMITTED) == 3
    assert jobs[3].reason == "tenant quota h100: 3 of 2 in use, borrowing limit reached"
    assert [r.borrowed for r in Reservation.objects.order_by("job_id")] == [0, 0, 1]


def test_lending_limit_caps_what_others_may_borrow(make_job, tenant, team, h100, cluster):
    other, _ = team
    Quota.objects.filter(tenant=tenant).delete()
    Pool.objects.filter(gpu_type=h100).update(capacity=4)
    Quota.objects.create(tenant=tenant, gpu_type=h100, nominal=2)
    Quota.objects.create(tenant=other, gpu_type=h100, nominal=2, lending_limit=1)
    jobs = [make_job(name=f"j{i}") for i in range(4)]
    admit_pending()
    refreshed(*jobs)
    assert [j.state for j in jobs].count(JobState.ADMITTED) == 3
    assert jobs[3].reason == "tenant quota h100: 3 of 2 in use, no idle GPUs to borrow"


def test_reclaim_preempts_the_newest_borrowed_jobs(make_job, tenant, team, h100, cluster):
    other, bob = team
    Quota.objects.create(tenant=tenant, gpu_type=h100, nominal=2)
    Quota.objects.create(tenant=other, gpu_type=h100, nominal=2)
    mine = [make_job(name=f"mine-{i}") for i in range(4)]
    admit_pending()
    for job in refreshed(*mine):
        job.mark_submitted("x")
        job.mark_running(timezone.now() - timedelta(minutes=30))
    theirs = make_job(name="theirs", tenant=other, owner=bob, gpu_count=2)
    result = admit_pending()
    assert (result.admitted, result.preempted) == (1, 2)
    refreshed(theirs, *mine)
    assert theirs.state == JobState.ADMITTED
    assert [j.state for j in mine] == [JobState.RUNNING, JobState.RUNNING, JobState.PENDING, JobState.PENDING]
    assert mine[3].reason == PREEMPTED_REASON and mine[3].attempt == 1
    assert mine[3].preempted_seconds >= 30 * 60
    preempted = Reservation.objects.get(job=mine[3], attempt=0)
    assert preempted.used_gpu_hours == 0 and preempted.preempted_gpu_hours == Decimal("0.5000")
    assert held(h100) == 4


def test_a_job_is_never_preempted_to_serve_a_borrower(make_job, tenant, team, h100, cluster):
    other, bob = team
    Quota.objects.create(tenant=tenant, gpu_type=h100, nominal=2)
    Quota.objects.create(tenant=other, gpu_type=h100, nominal=0)
    for i in range(4):
        make_job(name=f"mine-{i}")
    admit_pending()
    borrower = make_job(name="borrower", tenant=other, owner=bob)
    assert admit_pending().preempted == 0
    borrower.refresh_from_db()
    assert borrower.state == JobState.PENDING


def test_fair_share_lets_the_tenant_using_less_go_first(make_job, tenant, team, h100, cluster):
    other, bob = team
    Quota.objects.create(tenant=tenant, gpu_type=h100, nominal=2)
    Quota.objects.create(tenant=other, gpu_type=h100, nominal=2)
    Pool.objects.filter(gpu_type=h100).update(capacity=3)
    first = make_job(name="mine-0")
    admit_pending()
    mine = make_job(name="mine-1")
    theirs = make_job(name="theirs", tenant=other, owner=bob)
    admit_pending()
    refreshed(mine, theirs)
    # Both fit within nominal; the idle tenant goes first, then the other fills the last GPU.
    assert theirs.state == JobState.ADMITTED and mine.state == JobState.ADMITTED
    order = list(
        JobEvent.objects.filter(state=JobState.ADMITTED, job__in=[mine, theirs])
        .order_by("pk")
        .values_list("job", flat=True)
    )
    assert order == [theirs.pk, mine.pk] and first.pk


def test_priority_goes_first_but_is_capped_by_the_tenant(make_job, tenant, quotas):
    Budget.objects.create(tenant=tenant, max_priority=5)
    first = make_job(name="first", gpu_count=4)
    urgent = make_job(name="urgent", gpu_count=4, priority=5)
    greedy = make_job(name="greedy", gpu_count=4, priority=100)
    admit_pending()
    refreshed(first, urgent, greedy)
    # greedy is capped at 5 like urgent; between equals, the earlier submission wins.
    assert [first.state, urgent.state, greedy.state] == [
        JobState.PENDING,
        JobState.ADMITTED,
        JobState.PENDING,
    ]


def test_a_tenant_admin_at_100_cannot_overtake_another_tenants_earlier_job_within_its_fair_share(
    make_job, tenant, tenant_admin, team, h100, quotas
):
    other, bob = team
    Quota.objects.filter(tenant=tenant, gpu_type=h100).update(nominal=2, borrowing_limit=0)
    Quota.objects.create(tenant=other, gpu_type=h100, nominal=2, borrowing_limit=0)
    Budget.objects.create(tenant=tenant, max_priority=100)
    # Both tenants use nothing (equal fair share); one job of 4 GPUs fits (borrowing aside).
    Quota.objects.filter(gpu_type=h100).update(borrowing_limit=2)
    earlier = make_job(name="earlier", tenant=other, owner=bob, gpu_count=4)
    pushed = make_job(name="pushed", owner=tenant_admin, gpu_count=4, priority=100)
    admit_pending()
    refreshed(earlier, pushed)
    assert (earlier.state, pushed.state) == (JobState.ADMITTED, JobState.PENDING)


def test_priority_orders_a_tenants_own_jobs(make_job, tenant, tenant_admin, h100, quotas):
    Budget.objects.create(tenant=tenant, max_priority=100)
    routine = make_job(name="routine", gpu_count=4)
    urgent = make_job(name="urgent", owner=tenant_admin, gpu_count=4, priority=100)
    admit_pending()
    refreshed(routine, urgent)
    assert (routine.state, urgent.state) == (JobState.PENDING, JobState.ADMITTED)


def test_a_big_job_waiting_does_not_block_a_small_one_that_fits(make_job, quotas):
    make_job(name="holder", gpu_count=3)
    admit_pending()
    big = make_job(name="big", gpu_count=4)
    small = make_job(name="small", gpu_count=1)
    admit_pending()
    refreshed(big, small)
    assert (big.state, small.state) == (JobState.PENDING, JobState.ADMITTED)


def test_draining_clusters_get_no_new_jobs(make_job, cluster, quotas):
    Cluster.objects.filter(pk=cluster.pk).update(draining=True)
    job = make_job()
    assert admit_pending().admitted == 0
    job.refresh_from_db()
    assert job.reason == "no cluster accepting jobs has h100 GPUs"


def test_residency_is_a_hard_filter(make_job, tenant, cluster, h100, a100, quotas):
    eu = Cluster.objects.create(slug="eu-1", name="EU", kind="local", region="eu")
    Pool.objects.create(cluster=eu, gpu_type=h100, capacity=2)
    Pool.objects.create(cluster=eu, gpu_type=a100, capacity=2)
    tenant.regions = ["eu"]
    tenant.save()
    Quota.objects.filter(tenant=tenant).update(nominal=8)
    jobs = [make_job(name=f"j{i}") for i in range(3)]
    big = make_job(name="big", gpu_type=a100, gpu_count=4)
    admit_pending()
    placed = refreshed(*jobs, big)
    assert [j.cluster.slug if j.cluster else None for j in placed[:3]] == ["eu-1", "eu-1", None]
    assert placed[2].reason == "no allowed cluster in region eu has 1 free h100: 2 of 2 in use on eu-1"
    assert big.reason == "no allowed cluster in region eu has 4 free a100: 0 of 2 in use on eu-1"


def test_admission_places_a_job_only_where_its_owner_may_run_it(make_job, cluster, teammate, h100, quotas):
    """The teammate has no POSIX account: of an idle Slurm cluster and a busier local one, the
    local one runs their job; the owner's job may go to Slurm. With Slurm alone, the job waits,
    saying why, rather than being placed there and rejected at dispatch."""
    slurm = Cluster.objects.create(slug="slurm-1", name="Slurm", kind="slurm", region="local")
    Pool.objects.create(cluster=slurm, gpu_type=h100, capacity=8)
    busy = make_job(name="busy", gpu_count=2)
    admit_pending()
    assert refreshed(busy)[0].cluster == cluster  # local: the least loaded then (both idle, lower pk)
    Quota.objects.filter(gpu_type=h100).update(nominal=12)
    theirs, mine = make_job(name="theirs", owner=teammate), make_job(name="mine")
    admit_pending()
    theirs, mine = refreshed(theirs, mine)
    assert (theirs.cluster.slug, mine.cluster.slug) == ("local", "slurm-1")

    Cluster.objects.filter(pk=cluster.pk).update(draining=True)
    waiting = make_job(name="waiting", owner=teammate)
    admit_pending()
    (waiting,) = refreshed(waiting)
    assert waiting.state == JobState.PENDING
    assert waiting.reason == (
        "no cluster with h100 GPUs would run it: "
        "slurm-1 runs jobs as their owner's POSIX account, and the owner has none"
    )


def test_admission_places_a_job_only_where_its_image_is_allowed(make_job, cluster, h100, quotas):
    k8s = Cluster.objects.create(
        slug="k8s-1",
        name="K8s",
        kind="kubernetes",
        region="local",
        connection={"in_cluster": True, "allowed_images": ["nvcr.io/nvidia/"]},
    )
    Pool.objects.create(cluster=k8s, gpu_type=h100, capacity=8)
    Quota.objects.filter(gpu_type=h100).update(nominal=12)
    busy = make_job(name="busy", gpu_count=2)  # no image: k8s-1 would not run it
    allowed = make_job(name="allowed", image="nvcr.io/nvidia/pytorch:24.05-py3")
    refused = make_job(name="refused", image="docker.io/library/busybox:1.36")
    admit_pending()
    busy, allowed, refused = refreshed(busy, allowed, refused)
    # After the first, k8s-1 is the least loaded for both others; only the allowed image goes there.
    assert [j.cluster.slug for j in (busy, allowed, refused)] == ["local", "k8s-1", "local"]

    Cluster.objects.filter(pk=cluster.pk).update(draining=True)
    waiting = make_job(name="waiting", image="nvcr.io/nvidia/pytorch:24.05-py3")
    Job.objects.filter(pk=waiting.pk).update(image="docker.io/library/busybox:1.36")  # as by an old row
    admit_pending()
    (waiting,) = refreshed(waiting)
    assert waiting.state == JobState.PENDING
    assert (
        waiting.reason
        == "no cluster with h100 GPUs would run it: k8s-1 runs only images from nvcr.io/nvidia/"
    )


def test_hard_budget_holds_jobs_and_settlement_refunds(make_job, tenant, quotas):
    Budget.objects.create(tenant=tenant, gpu_hours_per_month=Decimal("3"), hard=True)
    first = make_job(name="first", gpu_count=2, time_limit_minutes=60)  # reserves 2 GPU-h
    second = make_job(name="second", gpu_count=2, time_limit_minutes=60)
    admit_pending()
    refreshed(first, second)
    assert first.state == JobState.ADMITTED
    assert second.reason == "budget: 1 GPU-h left, job needs 2"
    finish(first, minutes=15)  # really used 0.5 GPU-h: 1.5 refunded
    settle_released()
    assert Reservation.objects.get(job=first).used_gpu_hours == Decimal("0.5000")
    admit_pending()
    second.refresh_from_db()
    assert second.state == JobState.ADMITTED


def test_soft_budget_lets_jobs_run_on(make_job, tenant, quotas):
    Budget.objects.create(tenant=tenant, gpu_hours_per_month=Decimal("1"), hard=False)
    job = make_job(gpu_count=4, time_limit_minutes=600)
    admit_pending()
    job.refresh_from_db()
    assert job.state == JobState.ADMITTED


def test_settlement_happens_once(make_job, quotas):
    job = make_job()
    admit_pending()
    job.refresh_from_db()
    finish(job, minutes=6)
    assert settle_released() == 1
    assert settle_released() == 0
    reservation = Reservation.objects.get(job=job)
    assert reservation.used_gpu_hours == Decimal("0.1000") and reservation.settled_at


def test_lowering_a_quota_below_use_keeps_running_jobs(make_job, h100, quotas):
    running = [make_job(name=f"r{i}", gpu_count=2) for i in range(2)]
    admit_pending()
    Quota.objects.filter(gpu_type=h100).update(nominal=1)
    waiting = make_job(name="waits")
    admit_pending()
    refreshed(*running, waiting)
    assert all(j.state == JobState.ADMITTED for j in running)
    assert waiting.reason.startswith("tenant quota h100: 4 of 1 in use")
    for job in running:
        finish(job, minutes=1)
    admit_pending()
    waiting.refresh_from_db()
    assert waiting.state == JobState.ADMITTED


def test_a_pass_uses_a_constant_number_of_queries_per_admitted_job(
    make_job, quotas, django_assert_max_num_queries
):
    for i in range(4):
        make_job(name=f"a{i}")
    with django_assert_max_num_queries(60):
        assert admit_pending().admitted == 4
    for i in range(40):
        make_job(name=f"b{i}", gpu_type=quotas[1].gpu_type)
    # Ten times the jobs, the same four admissions' worth of writes plus the same fixed reads.
    Quota.objects.filter(gpu_type=quotas[1].gpu_type).update(nominal=4)
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as ctx:
        assert admit_pending().admitted == 4
    assert len(ctx.captured_queries) <= 60


@pytest.mark.django_db(transaction=True)
def test_concurrent_passes_never_oversubscribe_quota_pool_or_budget(
    make_job, tenant, team, h100, cluster, monkeypatch
):
    """Several workers run admission passes while jobs complete, get cancelled and quotas change,
    each on its own PostgreSQL connection; the invariants hold afterwards."""
    assert connection.vendor == "postgresql"
    other, bob = team
    Quota.objects.create(tenant=tenant, gpu_type=h100, nominal=2, borrowing_limit=1)
    Quota.objects.create(tenant=other, gpu_type=h100, nominal=2, borrowing_limit=2)
    Budget.objects.create(tenant=other, gpu_hours_per_month=Decimal("5"), hard=True)
    real_decide = admission.Snapshot.decide

    def slow_decide(self, job, **kwargs):
        time.sleep(0.002)  # widen the window in which an unlocked pass would race
        return real_decide(self, job, **kwargs)

    monkeypatch.setattr(admission.Snapshot, "decide", slow_decide)
    real_write = admission.write_admissions

    def slow_write(snapshot):
        time.sleep(0.03)  # and the window between deciding and writing
        return real_write(snapshot)

    monkeypatch.setattr(admission, "write_admissions", slow_write)
    for i in range(10):
        make_job(name=f"a{i}", gpu_count=1 + i % 2)
        make_job(name=f"b{i}", tenant=other, owner=bob, gpu_count=1)
    errors: list[BaseException] = []
    violations: list[str] = []

    def check_invariants():
        total = held(h100)
        if total > 4:
            violations.append(f"pool: {total} of 4")
        if held(h100, tenant) > 2 + 1:
            violations.append("tenant demo-lab over nominal + borrowing limit")
        spent = Reservation.objects.gpu_hours_by_tenant(month_of()).get(other.pk, Decimal(0))
        if spent > 5:
            violations.append(f"team-b budget: {spent} of 5")

    def run(work):
        from django.db import connections

        try:
            for _ in range(6):
                work()
                check_invariants()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    def complete_one():
        job = Job.objects.filter(state=JobState.ADMITTED).order_by("?").first()
        if job is not None:
            job.mark_submitted("x")
            job.finish(JobState.SUCCEEDED, exit_code=0, started_at=timezone.now(), ended_at=timezone.now())

    def cancel_one():
        job = Job.objects.filter(state__in=[JobState.PENDING, JobState.ADMITTED]).order_by("?").first()
        if job is not None:
            lifecycle.cancel(job)

    def submit_one():
        owner_kwargs = models_random_choice([{}, {"tenant": other, "owner": bob}])
        make_job(name="late", gpu_count=1 + models_random(0, 1), **owner_kwargs)

    def edit_quota():
        Quota.objects.filter(tenant=tenant).update(nominal=models_random(1, 3))

    workers = [admission.admit_pending] * 3 + [complete_one, cancel_one, edit_quota, submit_one]
    threads = [threading.Thread(target=run, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert not violations, violations
    settle_released()
    for reservation in Reservation.objects.select_related("job"):
        holding = reservation.job.state in HOLDING_STATES and reservation.job.attempt == reservation.attempt
        assert (reservation.settled_at is None) == holding
    assert (
        Reservation.objects.filter(attempt=0).values("job").distinct().count() == Reservation.objects.count()
    )


def models_random_choice(items):
    import random

    return random.choice(items)


def models_random(low: int, high: int) -> int:
    import random

    return random.randint(low, high)


@pytest.mark.django_db(transaction=True)
def test_a_pass_cannot_admit_on_a_view_another_pass_is_changing(make_job, quotas, h100, monkeypatch):
    """The interleaving that oversubscribes without the admission lock, forced on PostgreSQL: pass A
    has decided (job 1 takes the pool) but not committed; a more urgent job 2 arrives and pass B
    runs. B must wait for A and then see the pool full, instead of admitting job 2 as well."""
    assert connection.vendor == "postgresql"
    from quotas.models import Budget

    Budget.objects.create(tenant=quotas[0].tenant, max_priority=10)
    first = make_job(name="first", gpu_count=4)
    a_decided, b_finished = threading.Event(), threading.Event()
    real_write = admission.write_admissions

    def write_after_b(snapshot):
        if snapshot.placements and not a_decided.is_set():
            a_decided.set()
            b_finished.wait(timeout=2)  # with the lock, B cannot finish before A commits
        return real_write(snapshot)

    monkeypatch.setattr(admission, "write_admissions", write_after_b)

    def run_pass(done=None):
        from django.db import connections

        try:
            admission.admit_pending()
        finally:
            if done:
                done.set()
            connections.close_all()

    pass_a = threading.Thread(target=run_pass)
    pass_a.start()
    assert a_decided.wait(timeout=10)
    urgent = make_job(name="urgent", gpu_count=4, priority=10)
    pass_b = threading.Thread(target=run_pass, args=(b_finished,))
    pass_b.start()
    pass_a.join()
    pass_b.join()
    refreshed(first, urgent)
    assert held(h100) == 4
    assert (first.state, urgent.state) == (JobState.ADMITTED, JobState.PENDING)
