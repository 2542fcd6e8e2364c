"""A job on several nodes is billed, and its energy counted, for every GPU of every node."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from billing.models import UsageRecord

from .conftest import at

pytestmark = pytest.mark.django_db


def test_a_gang_is_metered_for_every_gpu_of_every_node(prices, ran, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):  # the release signal meters it
        job = ran(at(2026, 11, 3, 10), at(2026, 11, 3, 11), nodes=2, gpus_per_node=4, gpu_count=None)
    assert (job.nodes, job.gpus_per_node, job.gpu_count) == (2, 4, 8)
    line = UsageRecord.objects.get(job=job)
    assert (line.month, line.gpus, line.gpu_seconds) == (date(2026, 11, 1), 8, 8 * 3600)
    assert line.amount == Decimal("20.00")  # 8 GPU-h × 2.50
    # 2 nodes × 4 GPUs × 700 W × 1 h × PUE 1.20 = 6.72 kWh
    assert line.energy_kwh == Decimal("6.7200")
