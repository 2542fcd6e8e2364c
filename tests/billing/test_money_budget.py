from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from billing.models import RateCard
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


def test_a_hard_money_budget_counts_what_its_account_was_billed_in_its_one_currency(
    make_job, tenant, quotas, a100, a100_in_dollars, ran
):
    Budget.objects.create(tenant=tenant, amount_per_month=Decimal("20"), currency="EUR", hard=True)
    run_now(ran, 2, gpu_count=1)  # 2 GPU-h × 2.50 = 5.00 EUR
    # The cluster's a100 price is in USD, but the account is billed in EUR: the EUR a100 price bills it.
    run_now(ran, 2, gpu_count=4, gpu_type=a100)  # 8 GPU-h × 1.00 = 8.00 EUR
    job = make_job(gpu_count=2, time_limit_minutes=90)  # may cost 7.50 EUR of the 7.00 left
    admit_pending()
    job.refresh_from_db()
    assert job.state == JobState.PENDING
    assert job.reason == "budget: 7.00 EUR left, job may cost 7.50 EUR"


def test_a_hard_money_budget_holds_jobs_priced_only_in_another_currency(make_job, tenant, quotas, h100):
    RateCard.objects.create(
        gpu_type=h100, currency="USD", price_per_gpu_hour=Decimal("2.50"), effective_from=date(2026, 1, 1)
    )
    Budget.objects.create(tenant=tenant, amount_per_month=Decimal("1000"), currency="EUR", hard=True)
    job = make_job(gpu_count=1, time_limit_minutes=60)  # 2.50 USD: no measure of what is left in EUR
    admit_pending()
    job.refresh_from_db()
    assert job.state == JobState.PENDING
    assert job.reason == "budget: h100 is priced in USD, not in the budget's EUR"


def test_what_jobs_priced_in_another_currency_hold_is_not_taken_from_a_money_budget(
    make_job, tenant, quotas, prices, a100
):
    RateCard.objects.filter(gpu_type=a100).update(currency="USD", price_per_gpu_hour=Decimal("100"))
    dollars = make_job(gpu_type=a100, gpu_count=1, time_limit_minutes=60)  # holds 100.00 USD
    admit_pending()
    Budget.objects.create(tenant=tenant, amount_per_month=Decimal("20"), currency="EUR", hard=True)
    euros = make_job(gpu_count=2, time_limit_minutes=90)  # may cost 7.50 of the 20.00 EUR left
    admit_pending()
    dollars.refresh_from_db()
    euros.refresh_from_db()
    assert (dollars.state, euros.state) == (JobState.ADMITTED, JobState.ADMITTED)


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
