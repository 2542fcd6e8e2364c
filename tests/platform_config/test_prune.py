"""Deleting through a file is explicit (prune: true) and never removes what still has jobs, ledger
lines or running reservations: the plan says what blocks it, and apply refuses the whole plan."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing import metering
from billing.models import RateCard
from factory.models import ChangeSet, Cluster, GpuType, Pool, Tenant
from jobs.choices import JobState
from platform_config import applying, loading, planning
from platform_config.state import key_text
from quotas import admission
from quotas.models import Quota
from tests.support import admit

from .conftest import declare

pytestmark = pytest.mark.django_db

# The conftest fixtures' state (cluster "local" with h100 and a100 pools, tenant demo-lab), less
# the tenant and its quota.
WITHOUT_TENANT = """
prune: true
gpu_types:
- {slug: h100, name: H100}
- {slug: a100, name: A100, board_power_watts: 400}
clusters:
- slug: local
  name: Local
  kind: local
  pools:
  - {gpu_type: h100, capacity: 4}
  - {gpu_type: a100, capacity: 4}
tenants:
- {slug: keep-me, name: Kept}
"""


@pytest.fixture(autouse=True)
def no_dispatch(django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks():
        yield


@pytest.fixture
def quota(tenant, h100):
    return Quota.objects.create(tenant=tenant, gpu_type=h100, nominal=4)


def deletions(plan) -> dict[str, list[str]]:
    return {f"{c.kind} {key_text(c.key)}": c.blocked_by for c in plan.changes if c.action == "delete"}


def test_prune_deletes_a_tenant_without_history(tenant, quota, cluster):
    Tenant.objects.create(slug="keep-me", name="Kept")
    plan, change_set = applying.apply(declare(WITHOUT_TENANT))
    assert deletions(plan) == {"tenant demo-lab": [], "quota demo-lab/h100": []}
    assert not Tenant.objects.filter(slug="demo-lab").exists()
    assert change_set.summary == {"create": 0, "change": 0, "delete": 2}


def test_a_tenant_with_jobs_is_not_deleted_and_the_plan_says_why(
    make_job, quota, cluster, platform_file, run_platform
):
    Tenant.objects.create(slug="keep-me", name="Kept")
    make_job(name="waiting")
    status, out, _ = run_platform("plan", platform_file(WITHOUT_TENANT))
    assert status == 2
    assert "- tenant demo-lab\n    blocked: 1 jobs" in out
    assert "deletion(s) blocked: apply would refuse this plan" in out
    with pytest.raises(loading.Invalid) as refused:
        applying.apply(declare(WITHOUT_TENANT))
    assert [str(p) for p in refused.value.problems] == ["tenant demo-lab: Cannot be deleted: 1 jobs."]
    assert Tenant.objects.filter(slug="demo-lab").exists()
    assert Quota.objects.filter(tenant__slug="demo-lab").exists()
    assert not ChangeSet.objects.exists()


def test_a_quota_with_a_running_reservation_is_not_deleted(make_job, tenant, quota, cluster):
    job = make_job(name="admitted", gpu_count=2)
    admission.admit_pending()
    job.refresh_from_db()
    assert job.state == JobState.ADMITTED
    text = WITHOUT_TENANT.replace("- {slug: keep-me, name: Kept}", "- {slug: demo-lab, name: Demo Lab}")
    plan = planning.make_plan(declare(text))
    assert deletions(plan)["quota demo-lab/h100"] == ["1 running reservations"]


def test_a_pool_holding_jobs_is_not_deleted(make_job, tenant, quota, cluster):
    job = make_job(name="placed")
    admit(job, cluster)
    text = WITHOUT_TENANT.replace("  - {gpu_type: h100, capacity: 4}\n", "").replace(
        "- {slug: keep-me, name: Kept}",
        "- {slug: demo-lab, name: Demo Lab, quotas: {h100: {nominal: 4}}}",
    )
    plan = planning.make_plan(declare(text))
    assert deletions(plan)["pool local/h100"] == ["1 jobs holding its GPUs"]


def test_ledger_lines_block_deleting_a_tenant_a_gpu_type_a_cluster_and_a_price(
    make_job, tenant, cluster, h100
):
    card = RateCard.objects.create(
        gpu_type=h100, currency="EUR", price_per_gpu_hour=Decimal("2.00"), effective_from=date(2026, 1, 1)
    )
    job = make_job(name="ran")
    admit(job, cluster)
    job.mark_submitted("x")
    end = timezone.now() - timedelta(minutes=1)
    start = end - timedelta(minutes=30)
    job.mark_running(start)
    job.finish(JobState.SUCCEEDED, exit_code=0, started_at=start, ended_at=end)
    metering.meter_release(job.pk, 0, job.cluster_id, job.started_at, job.ended_at, False)
    assert job.usage_records.get().rate_card == card
    plan = planning.make_plan(declare("prune: true\n"))
    blocked = deletions(plan)
    assert blocked["tenant demo-lab"] == ["1 jobs", "1 ledger lines"]
    assert blocked["gpu_type h100"] == ["1 jobs", "1 ledger lines"]
    assert blocked["cluster local"] == ["1 jobs", "1 ledger lines"]
    assert blocked["rate_card h100/*/2026-01-01"] == ["1 ledger lines"]
    assert blocked["gpu_type a100"] == []
    assert GpuType.objects.count() == 2 and Cluster.objects.count() == 1 and Pool.objects.count() == 2
