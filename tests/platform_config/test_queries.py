"""Planning a file the portal already matches reads the portal in a fixed number of queries,
whatever the number of tenants (the benchmark, bench/platform.py, times it at 1,000)."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from platform_config import applying, loading

pytestmark = pytest.mark.django_db


def platform(tenants: int) -> str:
    lines = [
        "gpu_types:",
        "- {slug: h100, name: H100}",
        "- {slug: a100, name: A100}",
        "clusters:",
        "- {slug: c1, name: C1, kind: local, pools: [{gpu_type: h100, capacity: 64}]}",
        "tenants:",
        "- {slug: org, name: Org, quotas: {h100: {nominal: 1000}}}",
    ]
    for i in range(tenants):
        lines.append(
            f"- {{slug: t{i}, name: T{i}, parent: org, members: [{{user: platform}}], "
            f"quotas: {{h100: {{nominal: 4}}, a100: {{nominal: 2}}}}, budget: {{gpu_hours_per_month: 100}}}}"
        )
    return "\n".join(lines) + "\n"


def queries_of_unchanged_apply(tenants: int) -> int:
    declaration = loading.from_texts([("", platform(tenants))])
    plan, change_set = applying.apply(declaration)
    assert plan.has_changes
    with CaptureQueriesContext(connection) as queries:
        plan, change_set = applying.apply(loading.from_texts([("", platform(tenants))]))
    assert change_set is None and not plan.has_changes
    return len(queries.captured_queries)


def test_an_unchanged_plan_costs_the_same_queries_at_any_size(platform_admin):
    small = queries_of_unchanged_apply(5)
    from factory.models import Tenant

    Tenant.objects.all().update(parent=None)
    Tenant.objects.all().delete()
    large = queries_of_unchanged_apply(200)
    assert small == large
    assert large <= 20
