"""factory.bulk: many rows in one statement, as the ORM would have written them."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from factory import bulk
from factory.models import GpuType

pytestmark = pytest.mark.django_db


def test_insert_many_writes_one_row_per_value_with_the_models_defaults():
    with CaptureQueriesContext(connection) as queries:
        bulk.insert_many(
            GpuType,
            {"slug": ["a", "b", "c", "d"], "name": ["Same", "Same", "Other", "Same"]},
            {"memory_gb": 141},
        )
    assert len(queries) == 1
    rows = list(
        GpuType.objects.order_by("slug").values_list("slug", "name", "memory_gb", "board_power_watts")
    )
    assert rows == [
        ("a", "Same", 141, 700),
        ("b", "Same", 141, 700),
        ("c", "Other", 141, 700),
        ("d", "Same", 141, 700),
    ]


def test_update_many_sets_each_rows_value_only_where_asked():
    kinds = [GpuType.objects.create(slug=f"g{i}", name="old", memory_gb=80) for i in range(5)]
    GpuType.objects.filter(slug="g4").update(memory_gb=40)
    names = ["waits", "waits", "runs", "waits", "waits"]
    with CaptureQueriesContext(connection) as queries:
        changed = bulk.update_many(
            GpuType,
            [k.pk for k in kinds],
            {"name": names},
            {"board_power_watts": 350},
            where={"memory_gb": 80},
        )
    assert (changed, len(queries)) == (4, 1)
    rows = list(GpuType.objects.order_by("slug").values_list("name", "board_power_watts"))
    assert rows == [("waits", 350), ("waits", 350), ("runs", 350), ("waits", 350), ("old", 700)]
