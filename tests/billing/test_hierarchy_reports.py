"""Chargeback by department and cost center, with subtotals, in every export; money budgets that
count a department's projects."""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from datetime import date
from decimal import Decimal

import pytest
from openpyxl import load_workbook

from billing import metering
from billing.budgeting import money_spent
from billing.models import UsageRecord
from billing.reports import chargeback
from factory.models import Membership, Tenant
from tests.jobs.test_api import client_for

from .conftest import at

pytestmark = pytest.mark.django_db
NOVEMBER = date(2026, 11, 1)


@pytest.fixture
def uni(prices, ran, owner, a100):
    """uni → physics (CC-PHY) → lattice (CC-LAT), optics (CC-PHY); uni → chemistry (CC-LAT, shared
    with lattice). Usage in November 2026 in each project and in chemistry."""
    uni = Tenant.objects.create(slug="uni", name="Uni")
    physics = Tenant.objects.create(slug="physics", name="Physics", parent=uni, cost_center="CC-PHY")
    tenants = {
        "lattice": Tenant.objects.create(
            slug="lattice", name="Lattice", parent=physics, cost_center="CC-LAT"
        ),
        "optics": Tenant.objects.create(slug="optics", name="Optics", parent=physics, cost_center="CC-PHY"),
        "chemistry": Tenant.objects.create(slug="chemistry", name="Chem", parent=uni, cost_center="CC-LAT"),
    }
    for tenant in tenants.values():
        Membership.objects.create(user=owner, tenant=tenant)
    jobs = [
        ran(at(2026, 11, 2, 9), at(2026, 11, 2, 10, 7), tenant=tenants["lattice"], gpu_count=3),
        ran(
            at(2026, 11, 3, 9), at(2026, 11, 3, 9, 41), tenant=tenants["lattice"], gpu_type=a100, gpu_count=1
        ),
        ran(at(2026, 11, 4, 1), at(2026, 11, 4, 2, 13), tenant=tenants["optics"], gpu_count=2),
        ran(at(2026, 11, 5, 1), at(2026, 11, 5, 4), tenant=tenants["chemistry"], gpu_count=1),
    ]
    for job in jobs:
        metering.meter_release(job.pk, 0, job.cluster_id, job.started_at, job.ended_at, False)
    return {"uni": uni, "physics": physics, **tenants}


def ledger_by(column: str) -> dict[str, Decimal]:
    """The ledger's amounts by department (from the tenant tree) or cost center, independently."""
    departments = {"lattice": "physics", "optics": "physics", "chemistry": "chemistry"}
    totals: dict[str, Decimal] = defaultdict(Decimal)
    for line in UsageRecord.objects.select_related("tenant"):
        key = departments[line.tenant.slug] if column == "department" else line.cost_center
        totals[key] += line.amount
    return dict(totals)


def test_report_rows_carry_their_department_and_subtotals_add_up(uni):
    report = chargeback(NOVEMBER)
    assert [(r.department, r.tenant, r.gpu_type) for r in report.rows] == [
        ("chemistry", "chemistry", "h100"),
        ("physics", "lattice", "a100"),
        ("physics", "lattice", "h100"),
        ("physics", "optics", "h100"),
    ]
    assert {s.key: s.amount for s in report.by_department} == ledger_by("department")
    assert {s.key: s.amount for s in report.by_cost_center} == ledger_by("cost_center")
    total = report.totals["EUR"]
    assert (
        sum(s.amount for s in report.by_department) == total == sum(s.amount for s in report.by_cost_center)
    )
    physics = next(s for s in report.by_department if s.key == "physics")
    assert physics.jobs == 3 and physics.gpu_hours == sum(r.gpu_hours for r in report.rows[1:])


def test_every_export_groups_by_department_and_cost_center(uni, finance_user):
    api = client_for(finance_user)
    department, cost_center = ledger_by("department"), ledger_by("cost_center")

    data = api.get("/api/v1/reports/chargeback/", {"month": "2026-11"}).json()
    assert {s["department"]: Decimal(s["amount"]) for s in data["subtotals"]["department"]} == department
    assert {s["cost_center"]: Decimal(s["amount"]) for s in data["subtotals"]["cost_center"]} == cost_center
    assert {r["tenant"]: r["department"] for r in data["rows"]}["optics"] == "physics"

    text = api.get("/api/v1/reports/chargeback/?month=2026-11&format=csv").content.decode()
    rows = list(csv.DictReader(io.StringIO(text)))
    kinds = [(r["tenant"], r["department"], r["cost_center"]) for r in rows]
    assert kinds == [
        ("chemistry", "chemistry", "CC-LAT"),
        ("SUBTOTAL", "chemistry", ""),
        ("lattice", "physics", "CC-LAT"),
        ("lattice", "physics", "CC-LAT"),
        ("optics", "physics", "CC-PHY"),
        ("SUBTOTAL", "physics", ""),
        ("SUBTOTAL", "", "CC-LAT"),
        ("SUBTOTAL", "", "CC-PHY"),
        ("TOTAL", "", ""),
    ]
    subtotals = [r for r in rows if r["tenant"] == "SUBTOTAL"]
    assert {r["department"]: Decimal(r["amount"]) for r in subtotals if r["department"]} == department
    assert {r["cost_center"]: Decimal(r["amount"]) for r in subtotals if r["cost_center"]} == cost_center
    lines = [r for r in rows if r["tenant"] not in ("SUBTOTAL", "TOTAL")]
    assert sum(Decimal(r["amount"]) for r in lines) == Decimal(rows[-1]["amount"])

    sheet = load_workbook(
        io.BytesIO(api.get("/api/v1/reports/chargeback/?month=2026-11&format=xlsx").content)
    )
    cells = list(sheet.active.iter_rows())
    header = [c.value for c in cells[0]]
    tenant, dept, amount = header.index("tenant"), header.index("department"), header.index("amount")
    sheet_subtotals = [row for row in cells[1:] if row[tenant].value == "SUBTOTAL"]
    assert all(row[amount].font.bold and isinstance(row[amount].value, float) for row in sheet_subtotals)
    assert {
        row[dept].value: Decimal(str(row[amount].value)) for row in sheet_subtotals if row[dept].value
    } == department

    body = b"".join(api.get("/api/v1/reports/chargeback/?month=2026-11&format=focus").streaming_content)
    focus = defaultdict(Decimal)
    for row in csv.DictReader(io.StringIO(body.decode())):
        focus[row["x_Department"]] += Decimal(row["BilledCost"])
    assert dict(focus) == department


def test_the_chargeback_page_shows_the_subtotals(client, finance_user, uni):
    client.force_login(finance_user)
    page = client.get("/billing/chargeback/?month=2026-11").content.decode()
    physics = ledger_by("department")["physics"]
    assert 'id="subtotal-department-physics-EUR"' in page and f"{physics} EUR" in page
    assert 'id="subtotal-cost-center-CC-LAT-EUR"' in page


def test_a_departments_money_spent_counts_its_projects(uni):
    spent = money_spent({uni["physics"].pk: "EUR", uni["optics"].pk: "EUR", uni["uni"].pk: "USD"}, NOVEMBER)
    department = ledger_by("department")
    assert spent[uni["physics"].pk] == department["physics"]
    optics = UsageRecord.objects.filter(tenant=uni["optics"])
    assert spent[uni["optics"].pk] == sum(line.amount for line in optics)
    assert uni["uni"].pk not in spent  # billed in EUR, budgeted in USD: never added in


def test_a_billing_account_is_not_placed_below_another_tenant(uni, platform_admin):
    from billing.models import BillingAccount

    other = Tenant.objects.create(slug="acme", name="Acme")
    BillingAccount.objects.create(tenant=other, currency="USD")
    refused = client_for(platform_admin).patch("/api/v1/tenants/acme/", {"parent": "uni"}, format="json")
    assert refused.status_code == 400 and "acme is a billing account" in refused.json()["parent"][0]
    assert Tenant.objects.get(slug="acme").parent is None
