from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing import metering
from billing.models import GridIntensity, RateCard
from factory.months import month_begins, month_of
from tests.support import admit


@pytest.fixture
def prices(h100, a100, cluster):
    GridIntensity.objects.create(region="local", grams_co2e_per_kwh=Decimal("400"))
    return [
        RateCard.objects.create(
            gpu_type=h100, currency="EUR", price_per_gpu_hour=Decimal("2.50"), effective_from=date(2026, 1, 1)
        ),
        RateCard.objects.create(
            gpu_type=a100, currency="EUR", price_per_gpu_hour=Decimal("1.00"), effective_from=date(2026, 1, 1)
        ),
    ]


@pytest.fixture
def a100_in_dollars(prices, cluster, a100):
    """The local cluster's own a100 price, billed in another currency than the rest."""
    return RateCard.objects.create(
        gpu_type=a100,
        cluster=cluster,
        currency="USD",
        price_per_gpu_hour=Decimal("10.00"),
        effective_from=date(2026, 1, 1),
    )


def at(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def run_now(ran, hours: float, **spec):
    """A job that ran `hours` this month, metered into the ledger. It ended a minute ago, unless
    that would have started it last month (early on a 1st): then it ran from the month's start."""
    now = timezone.now()
    end = max(now - timedelta(minutes=1), month_begins(month_of(now)) + timedelta(hours=hours))
    job = ran(end - timedelta(hours=hours), end, **spec)
    metering.meter_release(job.pk, 0, job.cluster_id, job.started_at, job.ended_at, False)
    return job


@pytest.fixture
def frozen_now(monkeypatch) -> datetime:
    """ "Now" held still, at least a day into the current month: a job running "for an hour" never
    straddles a month boundary (its cost would be two lines, each rounded)."""
    real = timezone.now()
    now = max(real, month_begins(month_of(real)) + timedelta(days=1))
    monkeypatch.setattr(timezone, "now", lambda: now)
    return now


@pytest.fixture
def running(make_job, cluster):
    """A job running on the local cluster since `start`."""

    def run(start, **spec):
        job = make_job(**spec)
        admit(job, cluster)
        job.mark_submitted("x")
        job.mark_running(start)
        return job

    return run


@pytest.fixture
def ran(running):
    """A job that ran on the local cluster from `start` to `end` and ended in `state`."""
    from jobs.choices import JobState

    def run(start, end, *, state=JobState.SUCCEEDED, platform_fault=False, **spec):
        job = running(start, **spec)
        job.finish(state, exit_code=0, started_at=start, ended_at=end, platform_fault=platform_fault)
        return job

    return run
