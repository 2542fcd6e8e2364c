"""Admission along the tenant tree: idle GPUs lent within a department first, then across
departments; reclaim walking the same tree; department borrowing limits and budgets that cap their
projects together; a pass's queries not growing with the tree or the queue."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from factory.models import Membership, Pool, Tenant
from jobs.choices import JobState
from quotas.admission import PREEMPTED_REASON, admit_pending
from quotas.models import Budget, Quota, Reservation

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def run_on_commit(django_capture_on_commit_callbacks):
    """Admission enqueues dispatch on commit; these tests look at admission only."""
    with django_capture_on_commit_callbacks():
        yield


@pytest.fixture
def uni(db, cluster, h100, owner):
    """8 h100. uni (no quota of its own) → x (4: a 2, b 2) and y (4: c 2, d 2). The owner
    belongs to every project."""
    Pool.objects.filter(gpu_type=h100).update(capacity=8)
    uni = Tenant.objects.create(slug="uni", name="Uni")
    tenants = {"uni": uni}
    for dept, projects in (("x", ("a", "b")), ("y", ("c", "d"))):
        tenants[dept] = Tenant.objects.create(slug=dept, name=dept.upper(), parent=uni)
        Quota.objects.create(tenant=tenants[dept], gpu_type=h100, nominal=4)
        for slug in projects:
            tenants[slug] = Tenant.objects.create(slug=slug, name=slug.upper(), parent=tenants[dept])
            Quota.objects.create(tenant=tenants[slug], gpu_type=h100, nominal=2)
            Membership.objects.create(user=owner, tenant=tenants[slug])
    return tenants


def submit(make_job, tenant, name: str, gpus: int, minutes_ago: int = 0, **extra):
    from jobs.models import Job

    job = make_job(tenant=tenant, name=name, gpu_count=gpus, **extra)
    if minutes_ago:
        Job.objects.filter(pk=job.pk).update(created_at=timezone.now() - timedelta(minutes=minutes_ago))
    return job


def run(*jobs):
    for job in jobs:
        job.mark_submitted("x")
        job.mark_running(timezone.now() - timedelta(minutes=10))


def refreshed(*jobs):
    for job in jobs:
        job.refresh_from_db()
    return jobs


def test_idle_gpus_go_to_a_borrower_in_the_same_department_first(make_job, uni):
    """a leaves its 2 GPUs idle. c (department y) asked to borrow first, b (department x, a's
    sibling) later: b gets them. With every tenant at the top, the earlier c would have."""
    c_own = submit(make_job, uni["c"], "c-own", 2, minutes_ago=30)
    d_own = submit(make_job, uni["d"], "d-own", 2, minutes_ago=30)
    c_more = submit(make_job, uni["c"], "c-more", 2, minutes_ago=20)
    b_own = submit(make_job, uni["b"], "b-own", 2, minutes_ago=10)
    b_more = submit(make_job, uni["b"], "b-more", 2, minutes_ago=5)
    assert admit_pending().admitted == 4
    refreshed(c_own, d_own, c_more, b_own, b_more)
    assert [j.state for j in (c_own, d_own, b_own, b_more)] == [JobState.ADMITTED] * 4
    assert c_more.state == JobState.PENDING
    assert c_more.reason == "tenant quota h100: 2 of 2 in use, no idle GPUs to borrow"
    assert Reservation.objects.get(job=b_more).borrowed == 2


def test_a_department_with_nothing_idle_borrows_across_departments(make_job, uni):
    a_own = submit(make_job, uni["a"], "a-own", 2)
    b_more = submit(make_job, uni["b"], "b-all", 4)
    admit_pending()
    refreshed(a_own, b_more)
    assert (a_own.state, b_more.state) == (JobState.ADMITTED, JobState.ADMITTED)
    assert Reservation.objects.get(job=b_more).borrowed == 2  # from department y's idle GPUs


def test_a_department_borrowing_limit_caps_its_projects_together(make_job, uni):
    Quota.objects.filter(tenant__slug="x").update(borrowing_limit=0)
    a_own = submit(make_job, uni["a"], "a-own", 2)
    b_more = submit(make_job, uni["b"], "b-all", 4)
    admit_pending()
    refreshed(a_own, b_more)
    assert b_more.state == JobState.PENDING
    assert b_more.reason == "tenant quota h100: 0 of 2 in use; x above it has reached its borrowing limit"


def test_a_departments_own_jobs_use_its_share_and_borrow_from_its_idle_projects_first(make_job, uni, h100):
    Quota.objects.filter(tenant__slug="x").update(nominal=6)  # x's own share: 6 - (2 + 2)
    Pool.objects.filter(gpu_type=h100).update(capacity=10)
    own = submit(make_job, uni["x"], "x-own", 2)
    more = submit(make_job, uni["x"], "x-more", 4)  # a and b idle: lent to x before anyone else
    c_more = submit(make_job, uni["c"], "c-more", 4, minutes_ago=60)
    admit_pending()
    refreshed(own, more, c_more)
    assert (own.state, more.state) == (JobState.ADMITTED, JobState.ADMITTED)
    assert Reservation.objects.get(job=own).borrowed == 0
    assert Reservation.objects.get(job=more).borrowed == 4
    assert c_more.state == JobState.ADMITTED  # d's idle 2, within y


def test_reclaim_takes_back_from_the_borrowing_sibling_not_from_a_newer_job_elsewhere(make_job, uni):
    """b borrows a's idle GPUs (within x); d borrows c's (within y), later. When a wants its own
    back, the sibling b gives them back; d borrowed nothing of x's and keeps running."""
    b_jobs = [submit(make_job, uni["b"], f"b{i}", 2, minutes_ago=50 - i) for i in range(2)]
    admit_pending()
    d_jobs = [submit(make_job, uni["d"], f"d{i}", 2, minutes_ago=30 - i) for i in range(2)]
    admit_pending()
    run(*refreshed(*b_jobs, *d_jobs))
    assert Reservation.objects.filter(borrowed=2).count() == 2

    a_own = submit(make_job, uni["a"], "a-own", 2)
    result = admit_pending()
    assert (result.admitted, result.preempted) == (1, 1)
    refreshed(a_own, *b_jobs, *d_jobs)
    assert a_own.state == JobState.ADMITTED
    assert b_jobs[1].state == JobState.PENDING and b_jobs[1].reason == PREEMPTED_REASON
    assert [j.state for j in (b_jobs[0], *d_jobs)] == [JobState.RUNNING] * 3


def test_reclaim_never_takes_from_a_department_that_borrows_nothing_from_above(make_job, uni):
    """d borrows within y; x's a and b fill x. A job of a within its nominal (a's quota raised
    meanwhile, x's too) finds no room: y's borrower is no one's to reclaim from outside y."""
    d_jobs = [submit(make_job, uni["d"], f"d{i}", 2) for i in range(2)]
    a_own = submit(make_job, uni["a"], "a-own", 2)
    b_own = submit(make_job, uni["b"], "b-own", 2)
    admit_pending()
    run(*refreshed(*d_jobs, a_own, b_own))
    Quota.objects.filter(tenant__slug="x").update(nominal=6)
    Quota.objects.filter(tenant__slug="a").update(nominal=4)
    more = submit(make_job, uni["a"], "a-more", 2)
    assert admit_pending().preempted == 0
    more.refresh_from_db()
    assert more.state == JobState.PENDING and more.reason.startswith("no cluster has 2 free h100")


def test_a_department_budget_caps_its_projects_together(make_job, uni):
    Budget.objects.create(tenant=uni["x"], gpu_hours_per_month=Decimal("3"), hard=True)
    first = submit(make_job, uni["a"], "a-1", 2, minutes_ago=5, time_limit_minutes=60)
    second = submit(make_job, uni["b"], "b-1", 2, time_limit_minutes=60)
    elsewhere = submit(make_job, uni["c"], "c-1", 2, time_limit_minutes=60)
    admit_pending()
    refreshed(first, second, elsewhere)
    assert (first.state, elsewhere.state) == (JobState.ADMITTED, JobState.ADMITTED)
    assert second.reason == "budget of x: 1 GPU-h left, job needs 2"


def test_a_pass_costs_the_same_queries_whatever_the_size_of_the_tree_and_queue(
    make_job, cluster, h100, owner
):
    """Two trees and queues, the second five times the first; the same admissions (quotas that
    admit four jobs); the same number of statements."""

    def build(prefix: str, departments: int, projects: int, jobs_each: int) -> None:
        top = Tenant.objects.create(slug=f"{prefix}-org", name="Org")
        Quota.objects.create(tenant=top, gpu_type=h100, nominal=departments * projects, borrowing_limit=0)
        for d in range(departments):
            dept = Tenant.objects.create(slug=f"{prefix}-d{d}", name="D", parent=top)
            Quota.objects.create(tenant=dept, gpu_type=h100, nominal=projects)
            for p in range(projects):
                project = Tenant.objects.create(slug=f"{prefix}-d{d}-p{p}", name="P", parent=dept)
                Quota.objects.create(tenant=project, gpu_type=h100, nominal=1, borrowing_limit=0)
                Membership.objects.create(user=owner, tenant=project)
                for j in range(jobs_each):
                    make_job(tenant=project, name=f"j{j}", gpu_count=1)

    def counted_pass() -> tuple[int, int]:
        with CaptureQueriesContext(connection) as queries:
            admitted = admit_pending().admitted
        return admitted, len(queries.captured_queries)

    Pool.objects.filter(gpu_type=h100).update(capacity=4)
    build("s", 2, 2, 2)
    small = counted_pass()
    from jobs.models import Job

    Reservation.objects.all().delete()
    Job.objects.all().delete()
    build("l", 4, 5, 4)
    large = counted_pass()
    assert small[0] == large[0] == 4
    assert small[1] == large[1], (small, large)


def test_a_departments_quota_shows_its_projects_use(make_job, uni, platform_admin):
    from tests.jobs.test_api import client_for

    submit(make_job, uni["a"], "a-own", 2)
    submit(make_job, uni["b"], "b-all", 4)
    submit(make_job, uni["b"], "b-waits", 8)
    admit_pending()
    rows = client_for(platform_admin).get("/api/v1/quotas/", {"page_size": 50}).json()["results"]
    usage = {r["tenant"]: (r["in_use"], r["borrowed"], r["pending_demand"]) for r in rows}
    assert usage["x"] == (6, 2, 8) and usage["b"] == (4, 2, 8) and usage["y"] == (0, 0, 0)
