from __future__ import annotations

import csv
import io
from datetime import date
from decimal import Decimal

import pytest
from openpyxl import load_workbook

from billing import metering
from billing.models import RateCard, UsageRecord
from factory.models import Membership, Tenant
from tests.jobs.test_api import client_for

from .conftest import at

pytestmark = pytest.mark.django_db


@pytest.fixture
def november(prices, ran, make_job, a100, django_user_model):
    """Usage in November 2026 by two tenants, with amounts that need rounding."""
    vision = Tenant.objects.create(slug="vision", name="Vision", cost_center="CC-7")
    bob = django_user_model.objects.create_user("bob", password="pw-bob")
    Membership.objects.create(user=bob, tenant=vision)
    jobs = [
        ran(at(2026, 11, 2, 9), at(2026, 11, 2, 9, 7, 13), gpu_count=3),  # 0.3603 GPU-h ... rounded
        ran(at(2026, 11, 5, 1), at(2026, 11, 5, 2, 33), gpu_count=1),
        ran(at(2026, 11, 6, 1), at(2026, 11, 6, 1, 1, 1), gpu_type=a100, gpu_count=2),
        ran(at(2026, 11, 7, 8), at(2026, 11, 7, 9), tenant=vision, owner=bob, gpu_count=4),
    ]
    for job in jobs:
        metering.meter_release(job.pk, 0, job.cluster_id, job.started_at, job.ended_at, False)
    return jobs


def test_report_rows_add_up_to_the_total_to_the_cent(november):
    from billing.reports import chargeback

    report = chargeback(date(2026, 11, 1))
    assert [(r.tenant, r.gpu_type) for r in report.rows] == [
        ("demo-lab", "a100"),
        ("demo-lab", "h100"),
        ("vision", "h100"),
    ]
    lines_total = sum((line.amount for line in UsageRecord.objects.all()), Decimal(0))
    assert report.totals == {"EUR": lines_total}
    assert sum(r.amount for r in report.rows) == lines_total
    h100 = report.rows[1]
    assert h100.jobs == 2 and h100.amount == Decimal("0.90") + Decimal("3.88")


def test_finance_sees_the_chargeback_page_and_drills_down(client, finance_user, november):
    client.force_login(finance_user)
    page = client.get("/billing/chargeback/?month=2026-11").content.decode()
    assert "vision" in page and "CC-7" in page and 'id="total-EUR"' in page
    lines = client.get("/billing/chargeback/2026-11/demo-lab/h100/").content.decode()
    assert lines.count("/jobs/") >= 2
    assert client.get("/billing/chargeback/?month=2026-13").status_code == 400


def test_members_and_anonymous_cannot_see_chargeback(client, owner, november):
    client.force_login(owner)
    assert client.get("/billing/chargeback/").status_code == 403
    assert client_for(owner).get("/api/v1/reports/chargeback/?month=2026-11").status_code == 403


def test_finance_can_not_reach_jobs_of_tenants(finance_user, november):
    api = client_for(finance_user)
    assert api.get("/api/v1/jobs/").json()["results"] == []
    assert api.get(f"/api/v1/jobs/{november[0].pk}/").status_code == 404


def test_api_report_json_csv_xlsx_focus_agree(finance_user, november):
    api = client_for(finance_user)
    data = api.get("/api/v1/reports/chargeback/", {"month": "2026-11"}).json()
    total = Decimal(data["totals"]["amount"]["EUR"])
    assert total == sum(Decimal(r["amount"]) for r in data["rows"])

    csv_rows = list(
        csv.DictReader(
            io.StringIO(api.get("/api/v1/reports/chargeback/?month=2026-11&format=csv").content.decode())
        )
    )
    assert Decimal(csv_rows[-1]["amount"]) == total and csv_rows[-1]["tenant"] == "TOTAL"

    xlsx = api.get("/api/v1/reports/chargeback/?month=2026-11&format=xlsx")
    assert xlsx["Content-Type"].startswith("application/vnd.openxmlformats")
    sheet = load_workbook(io.BytesIO(xlsx.content)).active
    rows = list(sheet.iter_rows(values_only=True))
    header = rows[0]
    amount, tenant = header.index("amount"), header.index("tenant")
    assert all(isinstance(r[amount], (int, float)) for r in rows[1:])
    lines = [r for r in rows[1:-1] if r[tenant] != "SUBTOTAL"]  # and the department / cost center subtotals
    assert round(sum(r[amount] for r in lines), 2) == float(total) == rows[-1][amount]

    focus = api.get("/api/v1/reports/chargeback/?month=2026-11&format=focus")
    body = b"".join(focus.streaming_content).decode()
    focus_rows = list(csv.DictReader(io.StringIO(body)))
    assert len(focus_rows) == UsageRecord.objects.count()
    assert sum(Decimal(r["BilledCost"]) for r in focus_rows) == total
    first = focus_rows[0]
    assert (
        first["BillingPeriodStart"] == "2026-11-01T00:00:00Z"
        and first["BillingPeriodEnd"] == "2026-12-01T00:00:00Z"
    )
    assert (
        first["BillingCurrency"] == "EUR" and first["ConsumedUnit"] == "GPU-Hours" and first["SubAccountId"]
    )


def test_bad_report_parameters_are_field_errors(finance_user):
    api = client_for(finance_user)
    assert "month" in api.get("/api/v1/reports/chargeback/", {"month": "11-2026"}).json()
    assert "format" in api.get("/api/v1/reports/chargeback/", {"month": "2026-11", "format": "pdf"}).json()


def test_closing_a_month_freezes_its_report(client, finance_user, prices, ran):
    client.force_login(finance_user)
    from billing.reports import chargeback

    def run_and_meter(start, end):
        job = ran(start, end)
        metering.meter_release(job.pk, 0, job.cluster_id, job.started_at, job.ended_at, False)
        return job

    run_and_meter(at(2026, 10, 2, 9), at(2026, 10, 2, 10))
    before = chargeback(date(2026, 10, 1))
    response = client.post("/billing/chargeback/close/", {"month": "2026-10"})
    assert response.status_code == 302
    assert "Closed" in client.get("/billing/chargeback/?month=2026-10").content.decode()
    late = run_and_meter(at(2026, 10, 20, 1), at(2026, 10, 20, 5))  # metered after the close
    after = chargeback(date(2026, 10, 1))
    assert after.rows == before.rows and after.totals == before.totals and after.closed
    assert chargeback(date(2026, 11, 1)).totals == {"EUR": Decimal("10.00")}
    line = UsageRecord.objects.get(job=late)
    assert (line.kind, line.month) == ("adjustment", date(2026, 11, 1))


def test_only_past_months_can_be_closed(client, finance_user):
    client.force_login(finance_user)
    from django.utils import timezone

    now = timezone.now()
    client.post("/billing/chargeback/close/", {"month": f"{now:%Y-%m}"})
    from billing.models import MonthClose

    assert not MonthClose.objects.exists()


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"price_per_gpu_hour": "-1"}, "price_per_gpu_hour"),
        ({"currency": ""}, "currency"),
        ({"currency": "euro"}, "currency"),
        ({"effective_from": "2026-06-01", "effective_until": None}, "effective_from"),  # overlaps January on
        ({"effective_from": "2026-12-01", "effective_until": "2026-11-01"}, "effective_until"),
    ],
)
def test_bad_prices_are_rejected(finance_user, prices, payload, field):
    body = {
        "gpu_type": "h100",
        "currency": "EUR",
        "price_per_gpu_hour": "3.10",
        "effective_from": "2025-01-01",
        "effective_until": "2026-01-01",
        **payload,
    }
    response = client_for(finance_user).post("/api/v1/rate-cards/", body, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json()
    assert RateCard.objects.count() == 2


def test_finance_sets_a_price_in_the_portal(client, finance_user, h100, cluster):
    client.force_login(finance_user)
    data = {
        "gpu_type": h100.pk,
        "cluster": cluster.pk,
        "currency": "EUR",
        "price_per_gpu_hour": "2.75",
        "price_per_cpu_core_hour": "0",
        "price_per_memory_gb_hour": "0",
        "effective_from": "2026-11-01",
    }
    assert client.post("/billing/prices/", data).status_code == 302
    overlap = client.post("/billing/prices/", {**data, "effective_from": "2026-12-01"})
    assert overlap.status_code == 400 and "covers part of this period" in overlap.content.decode()


def test_members_see_only_their_tenants_usage(owner, november):
    rows = client_for(owner).get("/api/v1/usage/").json()["results"]
    assert rows and {r["tenant"] for r in rows} == {"demo-lab"}
