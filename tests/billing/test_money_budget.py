from __future__ import annotations

from decimal import Decimal

import pytest

from jobs.choices import JobState
from quotas.admission import admit_pending
from quotas.models import Budget

from .conftest import run_now

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def no_dispatch(django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks():
        yield


def test_a_hard_money_budget_holds_jobs_that_may_cost_more_than_is_left(
    make_job, tenant, quotas, prices, ran
):
    Budget.objects.create(tenant=tenant, amount_per_month=Decimal("20"), currency="EUR", hard=True)
    run_now(ran, 2, gpu_count=1)  # 2 GPU-h × 2.50 = 5.00 EUR billed this month
    jobs = [make_job(name=f"j{i}", gpu_count=2, time_limit_minutes=90) for i in range(3)]  # 7.50 EUR each
    admit_pending()
    for job in jobs:
        job.refresh_from_db()
    assert [j.state for j in jobs] == [JobState.ADMITTED, JobState.ADMITTED, JobState.PENDING]
    assert jobs[2].reason == "budget: 0.00 EUR left, job may cost 7.50 EUR"


def test_a_hard_money_budget_counts_only_what_was_billed_in_its_currency(
    make_job, tenant, quotas, a100, a100_in_dollars, ran
):
    Budget.objects.create(tenant=tenant, amount_per_month=Decimal("20"), currency="EUR", hard=True)
    run_now(ran, 2, gpu_count=1)  # 2 GPU-h × 2.50 = 5.00 EUR
    run_now(ran, 2, gpu_count=4, gpu_type=a100)  # 8 GPU-h × 10.00 = 80.00 USD: not the budget's money
    job = make_job(gpu_count=2, time_limit_minutes=90)  # may cost 7.50 EUR of the 15.00 left
    admit_pending()
    job.refresh_from_db()
    assert job.state == JobState.ADMITTED


def test_a_soft_money_budget_only_warns(make_job, tenant, quotas, prices):
    Budget.objects.create(tenant=tenant, amount_per_month=Decimal("1"), currency="EUR", hard=False)
    job = make_job(gpu_count=4, time_limit_minutes=600)
    admit_pending()
    job.refresh_from_db()
    assert job.state == JobState.ADMITTED


def test_money_budget_needs_a_currency(tenant):
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError, match="currency"):
        Budget(tenant=tenant, amount_per_month=Decimal("10")).full_clean()
