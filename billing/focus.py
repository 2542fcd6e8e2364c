"""The ledger as FOCUS cost-and-usage rows (FinOps Open Cost and Usage Specification 1.2).

One row per ledger line. The portal is the provider, publisher and invoice issuer; a tenant is a
sub account, billed to its billing account (the top of its tenant tree); a SKU is a GPU type on a
cluster and a SKU price is the rate card that priced the line. Late usage of a closed month, and
any line charging a period before the one it is billed in, is ChargeClass "Correction"; credits
finance grants are ChargeCategory "Credit". Columns of concepts the portal does not have
(commitment discounts) are present and null.

Besides the 1.2 columns, those that the FinOps validator's 1.0 rules still read under earlier names
(Provider, Publisher, InvoiceIssuer, ResourceID from 1.0-preview; ChargeType from 0.5) repeat
their 1.2 counterparts: the spec allows extra columns. The portal's own dimensions are x_-prefixed,
as the spec asks of custom columns.

Rows stream a chunk of lines at a time (keyset paging on id), with names, prices and invoice
numbers looked up once per export: memory stays flat whatever the month holds.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Iterable, Iterator
from datetime import UTC, date
from decimal import Decimal

from django.conf import settings

from factory.months import month_begins, next_month

from .models import UsageKind, UsageRecord, to_cents


@dataclasses.dataclass(frozen=True)
class Column:
    name: str
    version: str  # the FOCUS version whose definition the column follows
    why: str = ""


COLUMNS = [
    Column("AvailabilityZone", "1.2", "null: clusters are not split into zones"),
    Column("BilledCost", "1.2"),
    Column("BillingAccountId", "1.2", "the top-level tenant's slug"),
    Column("BillingAccountName", "1.2"),
    Column("BillingAccountType", "1.2"),
    Column("BillingCurrency", "1.2"),
    Column("BillingPeriodEnd", "1.2"),
    Column("BillingPeriodStart", "1.2"),
    Column("ChargeCategory", "1.2"),
    Column("ChargeClass", "1.2"),
    Column("ChargeDescription", "1.2"),
    Column("ChargeFrequency", "1.2"),
    Column("ChargePeriodEnd", "1.2"),
    Column("ChargePeriodStart", "1.2"),
    Column("CommitmentDiscountCategory", "1.2", "null: no commitment discounts"),
    Column("CommitmentDiscountId", "1.2", "null: no commitment discounts"),
    Column("CommitmentDiscountName", "1.2", "null: no commitment discounts"),
    Column("CommitmentDiscountQuantity", "1.2", "null: no commitment discounts"),
    Column("CommitmentDiscountStatus", "1.2", "null: no commitment discounts"),
    Column("CommitmentDiscountType", "1.2", "null: no commitment discounts"),
    Column("CommitmentDiscountUnit", "1.2", "null: no commitment discounts"),
    Column("ConsumedQuantity", "1.2"),
    Column("ConsumedUnit", "1.2"),
    Column("ContractedCost", "1.2"),
    Column("ContractedUnitPrice", "1.2", "the rate card: prices are what is agreed"),
    Column("EffectiveCost", "1.2"),
    Column("InvoiceId", "1.2", "the invoice number once the month is closed"),
    Column("InvoiceIssuerName", "1.2"),
    Column("ListCost", "1.2"),
    Column("ListUnitPrice", "1.2"),
    Column("PricingCategory", "1.2"),
    Column("PricingQuantity", "1.2"),
    Column("PricingUnit", "1.2"),
    Column("ProviderName", "1.2"),
    Column("PublisherName", "1.2"),
    Column("RegionId", "1.2"),
    Column("RegionName", "1.2"),
    Column("ResourceId", "1.2", "the job's uid"),
    Column("ResourceName", "1.2"),
    Column("ResourceType", "1.2"),
    Column("ServiceCategory", "1.2"),
    Column("ServiceName", "1.2"),
    Column("ServiceSubcategory", "1.2"),
    Column("SkuId", "1.2", "GPU type × cluster"),
    Column("SkuMeter", "1.2"),
    Column("SkuPriceDetails", "1.2"),
    Column("SkuPriceId", "1.2", "the rate card"),
    Column("SubAccountId", "1.2", "the tenant's slug"),
    Column("SubAccountName", "1.2"),
    Column("SubAccountType", "1.2"),
    Column("Tags", "1.2", "null: jobs carry no tags"),
    Column("ChargeType", "0.5", "read by the 1.0 validator's SkuPriceId rule; 0.5 had no Credit"),
    Column("InvoiceIssuer", "1.0-preview", "1.0 validator name of InvoiceIssuerName"),
    Column("Provider", "1.0-preview", "1.0 validator name of ProviderName"),
    Column("Publisher", "1.0-preview", "1.0 validator name of PublisherName"),
    Column("ResourceID", "1.0-preview", "1.0 validator name of ResourceId"),
    Column("x_CostCenter", "custom"),
    Column("x_EnergyKwh", "custom"),
    Column("x_Co2eKg", "custom"),
    Column("x_JobId", "custom", "the portal's job number"),
    Column("x_LedgerLineId", "custom"),
    Column("x_CorrectsLedgerLineId", "custom"),
    Column("x_CreatedBy", "custom", "who granted a credit or made a correction"),
]
NAMES = [column.name for column in COLUMNS]

SERVICE_NAME = "GPU jobs"
SERVICE_CATEGORY = "AI and Machine Learning"
SERVICE_SUBCATEGORY = "AI Platforms"
GPU_HOURS = "GPU-Hours"  # FOCUS unit format: <singular-unit>-<plural-time-units>
FIELDS = [
    "id", "month", "period_start", "period_end", "kind", "note", "amount", "currency", "gpu_seconds",
    "cpu_core_seconds", "memory_gb_seconds", "gpus", "tenant_id", "cost_center", "gpu_type_id", "cluster_id",
    "job_id", "job__uid", "job__name", "rate_card_id", "corrects_id", "energy_kwh", "co2e_kg",
    "created_by__username",
]  # fmt: skip
CHUNK = 20000
SIX = Decimal("0.000001")


@dataclasses.dataclass
class Lookups:
    """Everything a row needs besides its line, loaded once per export."""

    tenants: dict[int, tuple[str, str, int]]  # id: slug, name, billing account id
    gpu_types: dict[int, str]
    clusters: dict[int, tuple[str, str]]  # id: slug, region
    cards: dict[int, tuple[Decimal, Decimal, Decimal]]  # GPU-hour, CPU-core-hour, memory GB-hour
    invoices: dict[tuple[int, date], str]  # (billing account, month): number
    issuer: str

    @classmethod
    def load(cls) -> Lookups:
        from factory.models import Cluster, GpuType

        from .invoicing import billing_accounts
        from .models import Invoice, RateCard

        accounts = billing_accounts()
        return cls(
            tenants={pk: (t.slug, t.name, accounts[pk].pk) for pk, t in _tenants().items()},
            gpu_types=dict(GpuType.objects.values_list("pk", "slug")),
            clusters={c.pk: (c.slug, c.region) for c in Cluster.objects.only("slug", "region")},
            cards={
                pk: prices
                for pk, *prices in RateCard.objects.values_list(
                    "pk", "price_per_gpu_hour", "price_per_cpu_core_hour", "price_per_memory_gb_hour"
                )
            },
            invoices={
                (account, month): f"INV-{number:06d}"
                for account, month, number in Invoice.objects.values_list(
                    "billing_account_id", "month", "number"
                )
            },
            issuer=settings.FACTORY_BILLING_ISSUER,
        )

    def account(self, tenant_id: int) -> tuple[str, str]:
        account_id = self.tenants[tenant_id][2]
        account_slug, account_name, _ = self.tenants[account_id]
        return account_slug, account_name


def _tenants():
    from factory.models import Tenant

    return {t.pk: t for t in Tenant.objects.only("slug", "name", "parent_id")}


def _iso(moment) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def unit_price(card: tuple[Decimal, Decimal, Decimal], gpu_seconds: int, cpu: int, memory: int) -> Decimal:
    """The price of one GPU-hour of this line: the GPU-hour price plus the CPU cores and memory
    that came with each GPU-hour, at their prices. Times the GPU-hours, it is the line's cost
    before its one rounding."""
    gpu, per_core, per_gb = card
    if not gpu_seconds:
        return gpu
    return (gpu + Decimal(cpu) / gpu_seconds * per_core + Decimal(memory) / gpu_seconds * per_gb).quantize(
        SIX
    )


def row(line: tuple, look: Lookups, billing_start: str, billing_end: str) -> list:
    (pk, month, start, end, kind, note, amount, currency, gpu_seconds, cpu_seconds, memory_seconds, gpus,
     tenant_id, cost_center, gpu_type_id, cluster_id, job_id, job_uid, job_name, card_id, corrects_id,
     kwh, co2e, created_by) = line  # fmt: skip
    sub_slug, sub_name, _ = look.tenants[tenant_id]
    account_slug, account_name = look.account(tenant_id)
    gpu_type = look.gpu_types.get(gpu_type_id, "")
    cluster, region = look.clusters.get(cluster_id, ("", ""))
    sku = f"{gpu_type}@{cluster}" if gpu_type and cluster else gpu_type or None
    is_credit = kind == UsageKind.CREDIT
    correction = "Correction" if not is_credit and start < month_begins(month) else None
    charged = kind != UsageKind.PREEMPTED and kind != UsageKind.PLATFORM_FAULT
    card = look.cards.get(card_id)
    quantity = (Decimal(gpu_seconds) / 3600).quantize(SIX) if gpu_seconds or not is_credit else None
    price = unit_price(card, gpu_seconds, cpu_seconds, memory_seconds) if card else None
    if is_credit:
        list_cost, price = amount, None
    elif charged:
        list_cost = amount
        price = price if price is not None else Decimal(0)
    else:  # time recorded but not charged: its list value, waived
        list_cost = to_cents(price * quantity) if price is not None else Decimal(0)
        price = price if price is not None else Decimal(0)
    job_uid = str(job_uid) if job_uid else None
    description = note or (
        f"{gpus} x {gpu_type} GPU job on {cluster}" if charged else f"{gpus} x {gpu_type}, {kind}"
    )
    if not charged and note:
        description = f"{note} ({UsageKind(kind).label})"
    details = (
        json.dumps({"GpuCount": 1, "x_PricePerGpuHour": str(card[0])}) if card and not is_credit else None
    )
    return [
        None,  # AvailabilityZone
        amount,  # BilledCost
        account_slug,
        account_name,
        "Tenant",
        currency or "XXX",  # ISO 4217's "no currency" for time nothing priced
        billing_end,
        billing_start,
        "Credit" if is_credit else "Usage",
        correction,
        description,
        "Usage-Based",
        _iso(end),
        _iso(start),
        None,
        None,
        None,
        None,
        None,
        None,
        None,  # CommitmentDiscount*
        None if is_credit else quantity,  # ConsumedQuantity
        None if is_credit else GPU_HOURS,
        list_cost,  # ContractedCost: the agreed price is the list price
        price,  # ContractedUnitPrice
        amount,  # EffectiveCost
        look.invoices.get((look.tenants[tenant_id][2], month)),
        look.issuer,
        list_cost,
        price,  # ListUnitPrice
        None if is_credit else ("Standard" if charged else "Other"),
        quantity,  # PricingQuantity
        GPU_HOURS if quantity is not None else None,
        look.issuer,
        look.issuer,
        region or None,
        region or None,
        job_uid,
        (job_name or None) if job_uid else None,
        "GPU job" if job_uid else None,
        SERVICE_CATEGORY,
        SERVICE_NAME,
        SERVICE_SUBCATEGORY,
        sku,
        GPU_HOURS if sku else None,  # SkuMeter
        details,
        f"rate-card-{card_id}" if card_id and not is_credit else None,
        sub_slug,
        sub_name,
        "Tenant",
        None,  # Tags
        "Adjustment" if is_credit else "Usage",  # ChargeType
        look.issuer,  # InvoiceIssuer
        look.issuer,  # Provider
        look.issuer,  # Publisher
        job_uid,  # ResourceID
        cost_center or None,
        kwh,
        co2e,
        job_id,
        pk,
        corrects_id,
        created_by,
    ]


def chunks(month: date, tenants: Iterable[int] | None = None, lines=None) -> Iterator[list[tuple]]:
    """The month's lines (or those of `lines`), a chunk at a time by id."""
    lines = (UsageRecord.objects.filter(month=month) if lines is None else lines).order_by("id")
    if tenants is not None:
        lines = lines.filter(tenant_id__in=list(tenants))
    after = 0
    while True:
        chunk = list(lines.filter(id__gt=after).values_list(*FIELDS)[:CHUNK])
        if not chunk:
            return
        yield chunk
        after = chunk[-1][0]


class _Echo:
    def write(self, value: str) -> str:
        return value


def csv_stream(month: date, tenants: Iterable[int] | None = None, lines=None) -> Iterator[str]:
    """The month's FOCUS rows as CSV, a chunk at a time (nulls are empty cells). `lines` narrows
    the rows to a queryset of the month's lines (an invoice's)."""
    writer = csv.writer(_Echo(), lineterminator="\n")
    yield writer.writerow(NAMES)
    look = Lookups.load()
    start, end = _iso(month_begins(month)), _iso(month_begins(next_month(month)))
    for chunk in chunks(month, tenants, lines):
        yield "".join(writer.writerow(row(line, look, start, end)) for line in chunk)
