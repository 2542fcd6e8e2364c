from __future__ import annotations

import csv
import io
import re
import threading
from datetime import date
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.db import connection, connections, transaction
from pypdf import PdfReader
from rest_framework.test import APIClient

from billing import credits, immutable, invoicing, metering
from billing.models import Invoice, MonthClose, UsageRecord
from factory.models import Membership, Tenant

from .conftest import at

pytestmark = pytest.mark.django_db
SEPTEMBER, OCTOBER, NOVEMBER = date(2026, 9, 1), date(2026, 10, 1), date(2026, 11, 1)


def meter(job):
    metering.meter_release(job.pk, 0, job.cluster_id, job.started_at, job.ended_at, False)


@pytest.fixture
def accounts(prices, ran, a100, tenant, django_user_model):
    """demo-lab alone; acme with its department acme-vision, billed to acme."""
    acme = Tenant.objects.create(slug="acme", name="Acme Research")
    vision = Tenant.objects.create(slug="acme-vision", name="Acme Vision", parent=acme)
    bob = django_user_model.objects.create_user("bob", password="pw-bob")
    Membership.objects.create(user=bob, tenant=vision)
    return {"demo": tenant, "acme": acme, "vision": vision, "bob": bob}


@pytest.fixture
def september_and_october(accounts, ran, a100, finance_user):
    """September closed with a line later corrected; October usage of both accounts, late
    September usage, a credit."""
    first = ran(at(2026, 9, 10, 8), at(2026, 9, 10, 12))  # 4 h100-h: 10.00
    meter(first)
    invoicing.close_month(SEPTEMBER, finance_user)
    jobs = [
        ran(at(2026, 10, 2, 9), at(2026, 10, 2, 9, 7, 13), gpu_count=3),  # 0.90
        ran(at(2026, 10, 6, 1), at(2026, 10, 6, 1, 1, 1), gpu_type=a100, gpu_count=2),  # 0.03
        ran(
            at(2026, 10, 7, 8),
            at(2026, 10, 7, 9),
            tenant=accounts["vision"],
            owner=accounts["bob"],
            gpu_count=4,
        ),
        ran(
            at(2026, 10, 8, 8),
            at(2026, 10, 8, 10),
            tenant=accounts["acme"],
            owner=accounts["bob"],
            gpu_type=a100,
        ),
        ran(at(2026, 9, 30, 20), at(2026, 10, 1, 2)),  # late September usage 10.00, October 5.00
    ]
    for job in jobs:
        meter(job)
    credits.correct_line(UsageRecord.objects.get(job=first), Decimal("8.00"), "Slow node", finance_user)
    credits.grant_credit(accounts["demo"], OCTOBER, "Outage", finance_user, amount=Decimal("0.50"))
    return jobs


def test_closing_a_month_issues_one_numbered_invoice_per_billing_account(september_and_october, finance_user):
    invoicing.close_month(OCTOBER, finance_user)
    september = Invoice.objects.get(month=SEPTEMBER)
    acme, demo = Invoice.objects.filter(month=OCTOBER).order_by("number")
    assert (september.number, acme.number, demo.number) == (1, 2, 3)
    assert (acme.account_slug, demo.account_slug) == ("acme", "demo-lab")
    lines = [(line.section, line.gpu_type, line.cluster, line.amount) for line in demo.lines.all()]
    assert lines == [
        ("usage", "a100", "local", Decimal("0.03")),
        ("usage", "h100", "local", Decimal("0.90") + Decimal("5.00")),  # the run's October part
        (
            "correction",
            "h100",
            "local",
            Decimal("-2.00") + Decimal("10.00"),
        ),  # correction + late September usage
        ("credit", "", "", Decimal("-0.50")),
    ]
    assert demo.totals == {"EUR": str(sum(line[3] for line in lines))}
    assert acme.totals == {"EUR": "12.00"}  # 4 h100-h of acme-vision + 2 a100-h of acme
    ledger = UsageRecord.objects.filter(month=OCTOBER)
    assert demo.energy_kwh + acme.energy_kwh == sum(line.energy_kwh for line in ledger)
    assert demo.co2e_kg + acme.co2e_kg == sum(line.co2e_kg for line in ledger) > 0
    assert demo.ledger_lines + acme.ledger_lines == ledger.count()
    with pytest.raises(ValidationError):
        demo.save()
    with pytest.raises(ValidationError):
        demo.lines.first().save()


def test_the_pdf_and_the_focus_rows_add_up_to_the_invoice_to_the_cent(
    september_and_october, finance_user, client
):
    invoicing.close_month(OCTOBER, finance_user)
    invoice = Invoice.objects.get(month=OCTOBER, account_slug="demo-lab")
    client.force_login(finance_user)
    page = client.get("/billing/invoices/demo-lab/2026-10/").content.decode()
    assert "INV-000003" in page and f'id="invoice-total-EUR">{invoice.totals["EUR"]} EUR' in page
    pdf = client.get("/billing/invoices/demo-lab/2026-10/pdf/")
    assert pdf["Content-Type"] == "application/pdf"
    text = "\n".join(p.extract_text() for p in PdfReader(io.BytesIO(pdf.content)).pages)
    assert "Invoice INV-000003" in text and "Demo Lab (demo-lab)" in text and "2026-10" in text
    total = re.search(r"Total due\s+([-\d.]+)\s+EUR", text)
    assert total and Decimal(total[1]) == Decimal(invoice.totals["EUR"])
    assert f"Energy: {invoice.energy_kwh} kWh" in text and f"{invoice.co2e_kg} kg CO2e" in text
    assert "Credits" in text and "Corrections of earlier months" in text
    focus = client.get("/billing/invoices/demo-lab/2026-10/focus/")
    rows = list(csv.DictReader(io.StringIO(b"".join(focus.streaming_content).decode())))
    assert len(rows) == invoice.ledger_lines
    assert {r["InvoiceId"] for r in rows} == {"INV-000003"} and {r["BillingAccountId"] for r in rows} == {
        "demo-lab"
    }
    assert sum(Decimal(r["BilledCost"]) for r in rows) == Decimal(total[1])


def test_invoices_are_seen_by_finance_and_the_accounts_admins_only(
    september_and_october, finance_user, client, outsider, owner, tenant_admin
):
    invoicing.close_month(OCTOBER, finance_user)
    url = "/billing/invoices/demo-lab/2026-10/"
    client.force_login(tenant_admin)
    assert client.get(url).status_code == 200 and client.get(url + "pdf/").status_code == 200
    for user in (owner, outsider):
        client.force_login(user)
        assert client.get(url).status_code == 404 and client.get(url + "focus/").status_code == 404
    client.force_login(finance_user)
    listed = client.get("/billing/invoices/?month=2026-10").content.decode()
    assert "INV-000002" in listed and "INV-000003" in listed


def test_a_month_is_closed_once_and_invoiced_only_when_closed(september_and_october, finance_user, client):
    client.force_login(finance_user)
    response = client.get("/billing/invoices/demo-lab/2026-10/")
    assert response.status_code == 409 and "not closed" in response.content.decode()
    client.post("/billing/chargeback/close/", {"month": "2026-10"})
    again = client.post("/billing/chargeback/close/", {"month": "2026-10"}, follow=True)
    assert "already closed" in again.content.decode()
    assert Invoice.objects.filter(month=OCTOBER).count() == 2
    with pytest.raises(ValidationError, match="already closed"):
        invoicing.close_month(OCTOBER, finance_user)
    with pytest.raises(ValidationError, match="Only a past month"):
        invoicing.close_month(date.today().replace(day=1), finance_user)


@pytest.mark.django_db(transaction=True)
def test_concurrent_closes_issue_one_set_of_invoices(september_and_october, finance_user):
    """Four finance users close October at the same moment, each on its own PostgreSQL connection."""
    assert connection.vendor == "postgresql"
    barrier = threading.Barrier(4)
    outcomes: list[str] = []

    def close():
        try:
            barrier.wait()
            invoicing.close_month(OCTOBER, finance_user)
            outcomes.append("closed")
        except ValidationError as exc:
            outcomes.append(exc.messages[0])
        finally:
            connections.close_all()

    threads = [threading.Thread(target=close) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes)[-1] == "closed" and outcomes.count("closed") == 1
    assert all("already closed" in outcome for outcome in outcomes if outcome != "closed")
    assert MonthClose.objects.filter(month=OCTOBER).count() == 1
    assert sorted(Invoice.objects.values_list("number", flat=True)) == [1, 2, 3]
    billed = sum(sum(Decimal(v) for v in i.totals.values()) for i in Invoice.objects.filter(month=OCTOBER))
    assert billed == sum(line.amount for line in UsageRecord.objects.filter(month=OCTOBER))


@pytest.mark.django_db(transaction=True)
def test_a_close_waits_for_metering_in_flight_and_gives_up_cleanly(
    september_and_october, finance_user, ran, settings
):
    """Metering holds the billing lock (shared) on another connection: the close waits for it, and
    past its timeout fails with a message, closing nothing; once metering commits, its line is in
    the invoice, not in a later month."""
    held, release = threading.Event(), threading.Event()
    late = ran(at(2026, 10, 20, 1), at(2026, 10, 20, 3))  # 5.00, not metered yet
    with transaction.atomic(), immutable.repairing():
        UsageRecord.objects.filter(job=late).delete()  # metered on release: not yet, here

    def metering_worker():
        try:
            with transaction.atomic():
                metering.billing_lock(shared=True)
                held.set()
                release.wait(10)
                metering.meter_release(late.pk, 0, late.cluster_id, late.started_at, late.ended_at, False)
        finally:
            connections.close_all()

    worker = threading.Thread(target=metering_worker)
    worker.start()
    assert held.wait(10)
    settings.FACTORY_CLOSE_LOCK_TIMEOUT = 0.5
    with pytest.raises(ValidationError, match="Metering is writing"):
        invoicing.close_month(OCTOBER, finance_user)
    assert not MonthClose.objects.filter(month=OCTOBER).exists() and not Invoice.objects.filter(month=OCTOBER)
    settings.FACTORY_CLOSE_LOCK_TIMEOUT = 30
    threading.Timer(0.5, release.set).start()
    invoicing.close_month(OCTOBER, finance_user)  # waits for the worker's commit
    worker.join()
    line = UsageRecord.objects.get(job=late)
    assert line.month == OCTOBER and line.kind == "usage"
    demo = Invoice.objects.get(month=OCTOBER, account_slug="demo-lab")
    assert demo.ledger_lines == UsageRecord.objects.filter(month=OCTOBER, tenant__slug="demo-lab").count()


def api(user=None) -> APIClient:
    client = APIClient()
    if user is not None:
        client.force_authenticate(user)
    return client


def test_finance_lists_reads_and_downloads_invoices_through_the_api(september_and_october, finance_user):
    invoicing.close_month(OCTOBER, finance_user)
    listed = api(finance_user).get("/api/v1/invoices/", {"month": "2026-10"})
    assert listed.status_code == 200, listed.content
    assert [(i["display_number"], i["billing_account"]) for i in listed.json()["results"]] == [
        ("INV-000003", "demo-lab"),
        ("INV-000002", "acme"),
    ]
    demo = Invoice.objects.get(number=3)
    body = api(finance_user).get("/api/v1/invoices/3/").json()
    assert (body["number"], body["month"], body["account_name"]) == (3, "2026-10", "Demo Lab")
    assert body["totals"] == demo.totals and body["ledger_lines"] == demo.ledger_lines
    assert [(line["section"], line["gpu_type"], line["amount"]) for line in body["lines"]] == [
        (line.section, line.gpu_type, str(line.amount)) for line in demo.lines.all()
    ]
    assert Decimal(body["energy_kwh"]) == demo.energy_kwh and Decimal(body["co2e_kg"]) == demo.co2e_kg
    pdf = api(finance_user).get(body["pdf"])
    assert pdf.status_code == 200 and pdf["Content-Type"] == "application/pdf"
    text = "\n".join(p.extract_text() for p in PdfReader(io.BytesIO(pdf.content)).pages)
    assert "Invoice INV-000003" in text and re.search(rf"Total due\s+{demo.totals['EUR']}\s+EUR", text)
    focus = api(finance_user).get(body["focus"])
    rows = list(csv.DictReader(io.StringIO(b"".join(focus.streaming_content).decode())))
    assert len(rows) == demo.ledger_lines
    assert sum(Decimal(r["BilledCost"]) for r in rows) == Decimal(demo.totals["EUR"])
    everyone = api(finance_user).get("/api/v1/invoices/").json()["results"]
    assert [i["number"] for i in everyone] == [3, 2, 1]  # newest first, September's too


def test_tenant_admins_see_their_accounts_invoices_and_another_tenants_is_404(
    september_and_october, finance_user, tenant_admin, owner, outsider, platform_admin
):
    invoicing.close_month(OCTOBER, finance_user)
    admin = api(tenant_admin)
    assert [i["number"] for i in admin.get("/api/v1/invoices/").json()["results"]] == [3, 1]
    assert admin.get("/api/v1/invoices/", {"account": "acme"}).json()["results"] == []
    for path in ("/api/v1/invoices/2/", "/api/v1/invoices/2/pdf/", "/api/v1/invoices/2/focus/"):
        assert admin.get(path).status_code == 404  # acme's
    assert admin.get("/api/v1/invoices/3/pdf/").status_code == 200
    for user in (owner, outsider):  # a member of demo-lab, not its admin; another tenant's admin
        client = api(user)
        assert client.get("/api/v1/invoices/").json()["results"] == []
        assert client.get("/api/v1/invoices/3/").status_code == 404
        assert client.get("/api/v1/invoices/3/pdf/").status_code == 404
    assert api(platform_admin).get("/api/v1/invoices/2/").json()["billing_account"] == "acme"
    assert api().get("/api/v1/invoices/").status_code == 401


def test_invoices_of_a_month_not_closed_are_refused_with_a_message(september_and_october, finance_user):
    response = api(finance_user).get("/api/v1/invoices/", {"month": "2026-10"})
    assert response.status_code == 409
    assert response.json()["detail"] == "October 2026 is not closed: its invoices are issued at the close."
    bad = api(finance_user).get("/api/v1/invoices/", {"month": "2026-13"})
    assert bad.status_code == 400 and "month" in bad.json()
    september = api(finance_user).get("/api/v1/invoices/", {"month": "2026-09"}).json()["results"]
    assert [i["number"] for i in september] == [1]
