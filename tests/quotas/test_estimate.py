"""What a job would cost and how long it would wait, asked before submitting it."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from billing.models import RateCard
from jobs.models import Job
from quotas.admission import admit_pending
from quotas.models import Budget, Quota, Reservation

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def run_on_commit(django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks():
        yield


@pytest.fixture
def api(owner):
    client = APIClient()
    client.force_authenticate(owner)
    return client


@pytest.fixture
def price(h100):
    return RateCard.objects.create(
        gpu_type=h100,
        currency="EUR",
        price_per_gpu_hour=Decimal("2.50"),
        price_per_cpu_core_hour=Decimal("0.01"),
        effective_from=date(2026, 1, 1),
    )


def spec(**overrides) -> dict:
    return {
        "tenant": "demo-lab",
        "name": "train",
        "command": "python train.py",
        "gpu_type": "h100",
        "gpu_count": 2,
        "cpus": 4,
        "memory_gb": 16,
        "time_limit_minutes": 90,
        **overrides,
    }


def test_cost_budget_and_admission_of_a_job_that_fits_now(api, cluster, quotas, price, tenant):
    Budget.objects.create(tenant=tenant, amount_per_month=Decimal("100"), currency="EUR")
    response = api.post("/api/v1/jobs/estimate/", spec(), format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    # 2 GPUs × 1.5 h × 2.50 + 4 CPUs × 1.5 h × 0.01, priced as the ledger prices it.
    assert (body["cost"], body["currency"], body["gpu_hours"]) == ("7.56", "EUR", "3.0000")
    assert body["budget"] == {
        "unit": "EUR",
        "left": "100.00",
        "left_after": "92.44",
        "hard": True,
        "holds_job": False,
        "note": "",
    }
    assert body["admits_now"] is True and body["queued_ahead"] == 0
    assert body["admission"] == "fits now: 2 h100 on local (least loaded)"
    assert body["wait_basis"] == "admission would place it at its next pass"
    assert not Job.objects.exists() and not Reservation.objects.exists()  # nothing made


def test_an_array_costs_every_task_at_its_time_limit(api, cluster, quotas, price, tenant):
    Budget.objects.create(tenant=tenant, amount_per_month=Decimal("100"), currency="EUR")
    body = api.post("/api/v1/jobs/estimate/", spec(array="0-9%2"), format="json").json()
    assert (body["tasks"], body["cost"], body["gpu_hours"]) == (10, "75.60", "30.0000")
    assert body["budget"]["left_after"] == "24.40"
    assert (
        body["admission"] == "10 tasks, at most 2 at once; the first fits now: 2 h100 on local (least loaded)"
    )
    assert not Job.objects.exists()


def test_a_job_over_the_quota_or_the_budget_is_said_to_wait(api, make_job, cluster, quotas, price, tenant):
    Budget.objects.create(tenant=tenant, amount_per_month=Decimal("5"), currency="EUR")
    body = api.post("/api/v1/jobs/estimate/", spec(), format="json").json()
    assert body["budget"]["holds_job"] is True and body["budget"]["left_after"] == "-2.56"

    Budget.objects.all().delete()
    make_job(name="first", gpu_count=4)
    admit_pending()
    body = api.post("/api/v1/jobs/estimate/", spec(gpu_count=1), format="json").json()
    assert body["admits_now"] is False
    assert body["admission"] == "would wait: tenant quota h100: 4 of 4 in use, no idle GPUs to borrow"
    assert body["wait_seconds_median"] is None
    assert body["wait_basis"].startswith("unknown: fewer than 5 waits")

    Quota.objects.filter(gpu_type__slug="h100").update(nominal=8)
    Job.objects.update(state="pending", cluster=None)  # one of the tenant's h100 jobs waiting
    body = api.post("/api/v1/jobs/estimate/", spec(gpu_count=1), format="json").json()
    assert body["admits_now"] is False and body["queued_ahead"] == 1
    assert body["admission"].endswith("; 1 of the tenant's h100 jobs wait ahead of it")


def test_expected_wait_is_read_from_recent_admissions(api, make_job, cluster, quotas, price):
    make_job(name="blocker", gpu_count=4)
    admit_pending()
    now = timezone.now()
    for minutes in (1, 2, 3, 4, 10, 20):
        job = make_job(name=f"past-{minutes}")
        Job.objects.filter(pk=job.pk).update(
            created_at=now - timedelta(days=1, minutes=minutes), admitted_at=now - timedelta(days=1)
        )
    old = make_job(name="too-old")
    Job.objects.filter(pk=old.pk).update(
        created_at=now - timedelta(days=9, hours=5), admitted_at=now - timedelta(days=9)
    )
    body = api.post("/api/v1/jobs/estimate/", spec(gpu_count=1), format="json").json()
    assert body["admits_now"] is False
    # The blocker waited no time; the others 1, 2, 3, 4, 10 and 20 minutes; the 9-day-old one is out.
    assert (body["wait_seconds_median"], body["wait_samples"]) == (180, 7)
    assert body["wait_seconds_p90"] == 840
    assert "admitted in the last 7 days" in body["wait_basis"]


def test_bad_input_gets_the_submissions_field_errors_and_creates_nothing(
    api, cluster, quotas, price, other_tenant
):
    response = api.post("/api/v1/jobs/estimate/", spec(gpu_count=99, bogus=1), format="json")
    assert response.status_code == 400 and set(response.json()) == {"bogus"}
    response = api.post("/api/v1/jobs/estimate/", spec(gpu_count=99), format="json")
    assert response.status_code == 400 and "At most 4 h100 GPUs" in response.json()["gpu_count"][0]
    assert api.post("/api/v1/jobs/estimate/", spec(tenant="other-lab"), format="json").status_code == 404
    price.delete()
    response = api.post("/api/v1/jobs/estimate/", spec(), format="json")
    assert response.status_code == 400
    assert response.json()["gpu_type"] == ["h100 GPUs have no price yet, so there is no estimate."]
    assert not Job.objects.exists()


def test_the_form_shows_the_estimate_as_fields_change(client, owner, tenant, cluster, quotas, price, h100):
    client.force_login(owner)
    page = client.get("/jobs/new/").content.decode()
    assert 'hx-post="/jobs/estimate/"' in page
    form = {
        "tenant": tenant.pk,
        "name": "train",
        "command": "python train.py",
        "gpu_type": h100.pk,
        "gpu_count": 2,
        "cpus": 4,
        "memory_gb": 16,
        "time_limit_minutes": 90,
    }
    panel = client.post("/jobs/estimate/", form, HTTP_HX_REQUEST="true").content.decode()
    assert "7.56 EUR" in panel and "Runs now" in panel
    incomplete = client.post("/jobs/estimate/", {**form, "gpu_count": ""}, HTTP_HX_REQUEST="true")
    assert "Complete the form to see an estimate." in incomplete.content.decode()
    assert not Job.objects.exists()
