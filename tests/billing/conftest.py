from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from billing.models import GridIntensity, RateCard
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


def at(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.fixture
def ran(make_job, cluster):
    """A job that ran on the local cluster from `start` to `end` and ended in `state`."""
    from jobs.choices import JobState

    def run(start, end, *, state=JobState.SUCCEEDED, platform_fault=False, **spec):
        job = make_job(**spec)
        admit(job, cluster)
        job.mark_submitted("x")
        job.mark_running(start)
        job.finish(state, exit_code=0, started_at=start, ended_at=end, platform_fault=platform_fault)
        return job

    return run
