"""The FOCUS export against the FOCUS 1.2 specification and the FinOps Foundation's own validator.

Which FOCUS version each column follows (billing.focus.COLUMNS says the same):
- FOCUS 1.2 (specification/columns/*.md at tag v1.2 of the FOCUS_Spec repository): every column
  whose feature level is Mandatory, and the Conditional and Recommended ones whose condition the
  portal meets (sub accounts, regions, resources, usage measurement, published prices, invoices).
- FOCUS 1.0-preview names that focus-validator 1.0.0's "1.0" rule set still requires: Provider,
  Publisher, InvoiceIssuer, ResourceID (1.2: ProviderName, PublisherName, InvoiceIssuerName,
  ResourceId); and FOCUS 0.5's ChargeType, which its SkuPriceId rule reads (0.5 values: a credit
  is "Adjustment"). The spec allows additional columns, so both names are present.
- x_-prefixed: the portal's own dimensions (custom columns, as FOCUS asks).
"""

from __future__ import annotations

import csv
import io
import subprocess
import xml.etree.ElementTree as ET
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest

from billing import credits, focus, invoicing, metering
from billing.models import UsageRecord
from factory.models import Membership, Tenant

from .conftest import at

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parents[2]

# FOCUS 1.2, feature level "Mandatory" (specification/columns/*.md, v1.2).
MANDATORY_1_2 = {
    "BilledCost", "BillingAccountId", "BillingAccountName", "BillingCurrency", "BillingPeriodEnd",
    "BillingPeriodStart", "ChargeCategory", "ChargeClass", "ChargeDescription", "ChargePeriodEnd",
    "ChargePeriodStart", "ContractedCost", "EffectiveCost", "InvoiceIssuerName", "ListCost",
    "PricingQuantity", "PricingUnit", "ProviderName", "PublisherName", "ServiceCategory", "ServiceName",
}  # fmt: skip
# FOCUS 1.2 "Conditional"/"Recommended" columns whose condition this provider meets.
APPLICABLE_1_2 = {
    "BillingAccountType", "ChargeFrequency", "ConsumedQuantity", "ConsumedUnit", "ContractedUnitPrice",
    "InvoiceId", "ListUnitPrice", "PricingCategory", "RegionId", "RegionName", "ResourceId", "ResourceName",
    "ResourceType", "ServiceSubcategory", "SkuId", "SkuMeter", "SkuPriceDetails", "SkuPriceId",
    "SubAccountId", "SubAccountName", "SubAccountType",
}  # fmt: skip
VALIDATOR_1_0_NAMES = {"Provider", "Publisher", "InvoiceIssuer", "ResourceID", "ChargeType"}


@pytest.fixture
def autumn(prices, ran, running, make_job, a100, cluster, tenant, finance_user, django_user_model):
    """October and November 2026 of two billing accounts, one with a department: usage, October
    closed and invoiced, late October usage, a credit, a correction, a platform failure."""
    acme = Tenant.objects.create(slug="acme", name="Acme Research")
    vision = Tenant.objects.create(slug="acme-vision", name="Acme Vision", parent=acme, cost_center="CC-7")
    bob = django_user_model.objects.create_user("bob", password="pw-bob")
    Membership.objects.create(user=bob, tenant=vision)
    october = [
        ran(at(2026, 10, 2, 9), at(2026, 10, 2, 9, 7, 13), gpu_count=3),
        ran(at(2026, 10, 6, 1), at(2026, 10, 6, 1, 1, 1), gpu_type=a100, gpu_count=2),
        ran(at(2026, 10, 7, 8), at(2026, 10, 7, 9), tenant=vision, owner=bob, gpu_count=4),
    ]
    late = running(at(2026, 10, 30, 22))  # still running when October closes
    for job in october:
        metering.meter_release(job.pk, 0, job.cluster_id, job.started_at, job.ended_at, False)
    invoicing.close_month(date(2026, 10, 1), finance_user)
    late.finish("succeeded", exit_code=0, ended_at=at(2026, 11, 1, 3))
    metering.meter_finished()
    for job in [
        ran(at(2026, 11, 5, 1), at(2026, 11, 5, 2, 33), gpu_count=1),
        ran(at(2026, 11, 6, 1), at(2026, 11, 6, 3), state="failed", platform_fault=True),
        ran(at(2026, 11, 7, 8), at(2026, 11, 7, 9), tenant=vision, owner=bob, gpu_count=2),
    ]:
        metering.meter_release(job.pk, 0, job.cluster_id, job.started_at, job.ended_at, False)
    credits.grant_credit(
        tenant, date(2026, 10, 1), "Cluster maintenance overran", finance_user, amount=Decimal("0.5")
    )
    wrong = UsageRecord.objects.get(job=october[2])
    credits.correct_line(wrong, Decimal("5.00"), "Node was half down", finance_user)
    return {"acme": acme, "vision": vision, "late": late}


def export(month: date) -> str:
    return b"".join(focus.csv_stream(month)).decode()


def rows(body: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(body)))


def validate(body: str, tmp_path) -> ET.Element:
    data = tmp_path / "focus.csv"
    data.write_text(body)
    report = tmp_path / "report.xml"
    subprocess.run(
        [
            "bash",
            str(ROOT / "scripts/focus-validator"),
            "--data-file",
            str(data),
            "--validate-version",
            "1.0",
            "--output-type",
            "unittest",
            "--output-destination",
            str(report),
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return ET.parse(report).getroot()


@pytest.mark.parametrize("month", [date(2026, 10, 1), date(2026, 11, 1)])
def test_the_finops_validator_passes_every_rule_on_a_real_export(autumn, tmp_path, month):
    body = export(month)
    assert len(rows(body)) == UsageRecord.objects.filter(month=month).count() >= 3
    report = validate(body, tmp_path)
    cases = report.findall(".//testcase")
    failed = [
        (
            case.get("name"),
            (case.find("failure") if case.find("failure") is not None else case.find("error")).get("message"),
        )
        for case in cases
        if case.find("failure") is not None or case.find("error") is not None
    ]
    assert len(cases) > 100  # the whole 1.0 rule set ran, not a few rules
    assert failed == []


def test_the_export_has_every_column_focus_1_2_asks_of_this_provider(autumn):
    body = export(date(2026, 11, 1))
    header = next(csv.reader(io.StringIO(body)))
    assert set(header) >= MANDATORY_1_2
    assert set(header) >= APPLICABLE_1_2
    assert set(header) >= VALIDATOR_1_0_NAMES
    others = [name for name in header if name not in MANDATORY_1_2 | APPLICABLE_1_2 | VALIDATOR_1_0_NAMES]
    versions = {column.name: column.version for column in focus.COLUMNS}
    custom = [name for name in others if versions[name] == "custom"]
    assert all(name.startswith("x_") for name in custom)
    not_applicable = [name for name in others if name not in custom]  # commitment discounts, zones, tags
    assert {versions[name] for name in not_applicable} == {"1.2"} and len(not_applicable) == 9
    assert {row[name] for row in rows(body) for name in not_applicable} == {""}  # null
    assert {versions[name] for name in VALIDATOR_1_0_NAMES} == {"1.0-preview", "0.5"}
    assert {versions[name] for name in MANDATORY_1_2 | APPLICABLE_1_2} == {"1.2"}
    assert {"x_EnergyKwh", "x_Co2eKg", "x_CostCenter", "x_JobId"} <= set(header)


def test_rows_carry_the_values_the_spec_prescribes(autumn, tenant, settings):
    november = rows(export(date(2026, 11, 1)))
    assert {r["ProviderName"] for r in november} == {settings.FACTORY_BILLING_ISSUER}
    assert all(
        r["PublisherName"] == r["InvoiceIssuerName"] == r["Provider"] == r["ProviderName"] for r in november
    )
    vision = [r for r in november if r["SubAccountId"] == "acme-vision"]
    assert vision and {(r["BillingAccountId"], r["BillingAccountName"]) for r in vision} == {
        ("acme", "Acme Research")
    }
    usage = [r for r in november if r["ChargeCategory"] == "Usage" and not r["ChargeClass"]]
    for r in usage:  # the SKU is GPU type × cluster; its price the rate card
        assert r["SkuId"] in {"h100@local", "a100@local"} and r["SkuPriceId"].startswith("rate-card-")
        assert r["PricingUnit"] == r["ConsumedUnit"] == "GPU-Hours" and r["PricingCategory"] in {
            "Standard",
            "Other",
        }
        listed = Decimal(r["ListUnitPrice"]) * Decimal(r["PricingQuantity"])
        assert abs(listed - Decimal(r["ListCost"])) <= Decimal("0.005")
        assert r["ContractedCost"] == r["ListCost"] and r["EffectiveCost"] == r["BilledCost"]
        assert r["ResourceId"] == r["ResourceID"] and r["x_JobId"]
    waived = [r for r in usage if r["PricingCategory"] == "Other"]
    assert len(waived) == 1 and Decimal(waived[0]["BilledCost"]) == 0 < Decimal(waived[0]["ListCost"])
    late = [r for r in november if r["x_JobId"] == str(autumn["late"].pk) and r["ChargeClass"]]
    assert len(late) == 1 and late[0]["ChargeClass"] == "Correction" and late[0]["ChargeCategory"] == "Usage"
    assert (
        late[0]["ChargePeriodStart"] == "2026-10-30T22:00:00Z"
        and late[0]["BillingPeriodStart"] == "2026-11-01T00:00:00Z"
    )
    credit = [r for r in november if r["ChargeCategory"] == "Credit"]
    assert len(credit) == 1 and credit[0]["BilledCost"] == "-0.50" and not credit[0]["ChargeClass"]
    assert (
        credit[0]["ChargeDescription"] == "Cluster maintenance overran"
        and credit[0]["x_CreatedBy"] == "finance"
    )
    assert credit[0]["ChargePeriodStart"] == "2026-10-01T00:00:00Z"
    corrected = [r for r in november if r["x_CorrectsLedgerLineId"] and r["ChargeClass"] == "Correction"]
    assert len(corrected) == 1 and Decimal(corrected[0]["BilledCost"]) == Decimal("5.00") - Decimal("10.00")
    assert {r["CommitmentDiscountId"] for r in november} == {""}  # null: no commitment discounts
    assert all(r["InvoiceId"] == "" for r in november)  # November is not invoiced yet
    october = rows(export(date(2026, 10, 1)))
    assert {r["InvoiceId"] for r in october} == {"INV-000001", "INV-000002"}


def test_an_export_of_a_tenant_subset_only_has_their_rows(autumn):
    vision = autumn["vision"]
    body = b"".join(focus.csv_stream(date(2026, 11, 1), tenants=[vision.pk])).decode()
    assert {r["SubAccountId"] for r in rows(body)} == {"acme-vision"}


def test_the_database_writes_exactly_the_rows_the_reference_definition_gives(autumn, ran, h100, tenant):
    """On PostgreSQL the export is a COPY: it must say what row() says, cell for cell."""
    from billing.models import RateCard

    RateCard.objects.filter(gpu_type=h100).update(
        price_per_cpu_core_hour=Decimal("0.0130"), price_per_memory_gb_hour=Decimal("0.0021")
    )
    shaped = ran(at(2026, 11, 9, 1), at(2026, 11, 9, 2, 17, 41), gpu_count=3, cpus=7, memory_gb=33)
    metering.meter_release(shaped.pk, 0, shaped.cluster_id, shaped.started_at, shaped.ended_at, False)
    autumn["acme"].name = 'Acme "Research", Inc.'  # texts CSV must quote
    autumn["acme"].save()
    credits.grant_credit(
        tenant,
        date(2026, 11, 1),
        'GPUs lost, "node 7"',
        None,
        gpu_hours=Decimal("0.5"),
        gpu_type=h100,
    )
    writer = csv.writer(focus._Echo(), lineterminator="\n")
    for month in (date(2026, 10, 1), date(2026, 11, 1)):
        look = focus.Lookups.load()
        start, end = (
            focus._iso(focus.month_begins(month)),
            focus._iso(focus.month_begins(focus.next_month(month))),
        )
        reference = "".join(
            writer.writerow(focus.row(line, look, start, end))
            for chunk in focus.chunks(month)
            for line in chunk
        )
        copied = b"".join(focus.copy_stream(month, look)).decode()
        assert sorted(copied.splitlines()) == sorted(reference.splitlines())  # COPY does not sort
    assert "rate-card-" in copied and "Platform failure (not charged)" in copied
    assert '"Acme ""Research"", Inc."' in copied and '"GPUs lost, ""node 7"""' in copied
