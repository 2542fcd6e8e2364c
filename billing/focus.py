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
from collections.abc import Iterable, Iterator
from datetime import UTC, date
from decimal import ROUND_HALF_UP, Decimal

from django.conf import settings
from django.db import connection

from factory.months import month_begins, next_month

from .models import CENT, UsageKind, UsageRecord


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
    Column("x_Department", "custom", "the department: the tenant's ancestor just below its organisation"),
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
    departments: dict[int, str] = dataclasses.field(default_factory=dict)  # tenant id: department slug

    @classmethod
    def load(cls) -> Lookups:
        from factory.hierarchy import TenantTree
        from factory.models import Cluster, GpuType

        from .invoicing import billing_accounts
        from .models import Invoice, RateCard

        accounts = billing_accounts()
        tenants = _tenants()
        tree = TenantTree({pk: t.parent_id for pk, t in tenants.items()})
        return cls(
            tenants={pk: (t.slug, t.name, accounts[pk].pk) for pk, t in tenants.items()},
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
            departments={pk: tenants[tree.department(pk)].slug for pk in tenants},
        )


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
    if gpu_seconds:
        gpu = gpu + Decimal(cpu) / gpu_seconds * per_core + Decimal(memory) / gpu_seconds * per_gb
    return gpu.quantize(SIX, rounding=ROUND_HALF_UP)


NOT_CHARGED = {
    UsageKind.PREEMPTED: UsageKind.PREEMPTED.label,
    UsageKind.PLATFORM_FAULT: UsageKind.PLATFORM_FAULT.label,
}


def row(line: tuple, look: Lookups, billing_start: str, billing_end: str) -> list:
    """One FOCUS row. The reference definition: focus_copy_sql() says the same in SQL, and a test
    holds the two equal."""
    (pk, month, start, end, kind, note, amount, currency, gpu_seconds, cpu_seconds, memory_seconds, gpus,
     tenant_id, cost_center, gpu_type_id, cluster_id, job_id, job_uid, job_name, card_id, corrects_id,
     kwh, co2e, created_by) = line  # fmt: skip
    sub_slug, sub_name, account_id = look.tenants[tenant_id]
    account_slug, account_name, _ = look.tenants[account_id]
    gpu_type = look.gpu_types.get(gpu_type_id, "")
    cluster, region = look.clusters.get(cluster_id, ("", ""))
    sku = f"{gpu_type}@{cluster}" if gpu_type and cluster else gpu_type or None
    is_credit = kind == UsageKind.CREDIT
    charged = kind not in NOT_CHARGED
    card = look.cards.get(card_id)
    quantity = (Decimal(gpu_seconds) / 3600).quantize(SIX, rounding=ROUND_HALF_UP)
    if is_credit and not gpu_seconds:
        quantity = None
    unit = unit_price(card, gpu_seconds, cpu_seconds, memory_seconds) if card else None
    if is_credit:
        list_cost, price = amount, None
    elif charged:
        list_cost, price = amount, unit if unit is not None else Decimal(0)
    else:  # time recorded, not charged: its list value, waived
        price = unit if unit is not None else Decimal(0)
        list_cost = (price * quantity).quantize(CENT, rounding=ROUND_HALF_UP)
    description = note or f"{gpus} x {gpu_type} GPU job on {cluster}"
    if not charged:
        description = f"{description} ({NOT_CHARGED[kind]})"
    job_uid = str(job_uid) if job_uid else None
    priced = card_id is not None and not is_credit
    return [
        None,  # AvailabilityZone
        amount,  # BilledCost
        account_slug,
        account_name,
        "Tenant",  # BillingAccountType
        currency or "XXX",  # ISO 4217's "no currency": time that no price covers
        billing_end,
        billing_start,
        "Credit" if is_credit else "Usage",
        "Correction" if not is_credit and start < month_begins(month) else None,
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
        None,  # CommitmentDiscount*: none offered
        None if is_credit else quantity,  # ConsumedQuantity
        None if is_credit else GPU_HOURS,
        list_cost,  # ContractedCost: the agreed price is the list price
        price,  # ContractedUnitPrice
        amount,  # EffectiveCost
        look.invoices.get((account_id, month)),
        look.issuer,
        list_cost,
        price,  # ListUnitPrice
        None if is_credit else ("Standard" if charged else "Other"),
        quantity,  # PricingQuantity
        GPU_HOURS if quantity is not None else None,
        look.issuer,  # ProviderName
        look.issuer,  # PublisherName
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
        f'{{"GpuCount": 1, "x_PricePerGpuHour": "{card[0]}"}}' if priced and card else None,
        f"rate-card-{card_id}" if priced else None,
        sub_slug,
        sub_name,
        "Tenant",  # SubAccountType
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
        look.departments.get(tenant_id),
    ]


def chunks(month: date, tenants: Iterable[int] | None = None) -> Iterator[list[tuple]]:
    """The month's lines, a chunk at a time by id (keyset paging: memory stays flat)."""
    lines = UsageRecord.objects.filter(month=month).order_by("id")
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


def csv_stream(month: date, tenants: Iterable[int] | None = None) -> Iterator[str]:
    """The month's FOCUS rows as CSV (nulls are empty cells), a block at a time. On PostgreSQL the
    database writes the rows itself (COPY ... TO STDOUT, the same rules as row() in SQL), in the
    order it reads the ledger: ten million lines stream without a sort, in constant memory here.
    Elsewhere rows come in ledger order, a chunk of lines at a time."""
    writer = csv.writer(_Echo(), lineterminator="\n")
    yield writer.writerow(NAMES)
    look = Lookups.load()
    if connection.vendor == "postgresql":
        yield from copy_stream(month, look, tenants)
        return
    start, end = _iso(month_begins(month)), _iso(month_begins(next_month(month)))
    for chunk in chunks(month, tenants):
        yield "".join(writer.writerow(row(line, look, start, end)) for line in chunk)


def copy_stream(month: date, look: Lookups, tenants: Iterable[int] | None = None) -> Iterator[str]:
    sql, params = copy_sql(month, look, tenants)
    with connection.cursor() as cursor:
        # Compiling this wide query costs seconds and saves nothing on a scan of simple rows.
        cursor.execute("SET jit = off")
        try:
            with cursor.cursor.copy(sql, params) as copy:
                pending: list[bytes] = []
                size = 0
                for block in copy:
                    pending.append(bytes(block))
                    size += len(block)
                    if size >= 1 << 20:  # hand on about a megabyte at a time
                        yield b"".join(pending).decode()
                        pending, size = [], 0
                if pending:
                    yield b"".join(pending).decode()
        finally:
            cursor.execute("RESET jit")


TIMESTAMP = """to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')"""


def copy_sql(month: date, look: Lookups, tenants: Iterable[int] | None = None) -> tuple[str, list]:
    """COPY of the month's FOCUS rows: the SQL twin of row(), column for column."""
    names = {pk: values for pk, values in look.tenants.items()}
    ids = list(names)
    accounts = [names[pk][2] for pk in ids]
    invoices = list(look.invoices.items())
    not_charged = " ".join(f"WHEN '{kind}' THEN ' ({label})'" for kind, label in NOT_CHARGED.items())
    issuer = "%(issuer)s"
    columns = [
        "NULL",  # AvailabilityZone
        "u.amount",
        "acc.slug",
        "acc.name",
        "'Tenant'",
        "COALESCE(NULLIF(u.currency, ''), 'XXX')",
        "%(billing_end)s",
        "%(billing_start)s",
        "CASE WHEN u.kind = 'credit' THEN 'Credit' ELSE 'Usage' END",
        "CASE WHEN u.kind <> 'credit' AND u.period_start < (u.month::timestamp AT TIME ZONE 'UTC') "
        "THEN 'Correction' END",
        "COALESCE(NULLIF(u.note, ''), u.gpus || ' x ' || COALESCE(g.slug, '') || ' GPU job on ' || "
        f"COALESCE(c.slug, '')) || CASE u.kind {not_charged} ELSE '' END",
        "'Usage-Based'",
        TIMESTAMP.format("u.period_end"),
        TIMESTAMP.format("u.period_start"),
        *["NULL"] * 7,
        "CASE WHEN u.kind <> 'credit' THEN x.quantity END",
        f"CASE WHEN u.kind <> 'credit' THEN '{GPU_HOURS}' END",
        "x.list_cost",
        "x.price",
        "u.amount",
        "inv.number",
        issuer,
        "x.list_cost",
        "x.price",
        "CASE WHEN u.kind = 'credit' THEN NULL WHEN x.charged THEN 'Standard' ELSE 'Other' END",
        "x.quantity",
        f"CASE WHEN x.quantity IS NOT NULL THEN '{GPU_HOURS}' END",
        issuer,
        issuer,
        "NULLIF(c.region, '')",
        "NULLIF(c.region, '')",
        "j.uid::text",
        "CASE WHEN j.uid IS NOT NULL THEN NULLIF(j.name, '') END",
        "CASE WHEN j.uid IS NOT NULL THEN 'GPU job' END",
        f"'{SERVICE_CATEGORY}'",
        f"'{SERVICE_NAME}'",
        f"'{SERVICE_SUBCATEGORY}'",
        "x.sku",
        f"CASE WHEN x.sku IS NOT NULL THEN '{GPU_HOURS}' END",
        """CASE WHEN x.priced THEN '{"GpuCount": 1, "x_PricePerGpuHour": "' """
        """|| r.price_per_gpu_hour || '"}' END""",
        "CASE WHEN x.priced THEN 'rate-card-' || u.rate_card_id END",
        "sub.slug",
        "sub.name",
        "'Tenant'",
        "NULL",  # Tags
        "CASE WHEN u.kind = 'credit' THEN 'Adjustment' ELSE 'Usage' END",
        issuer,
        issuer,
        issuer,
        "j.uid::text",
        "NULLIF(u.cost_center, '')",
        "u.energy_kwh",
        "u.co2e_kg",
        "u.job_id",
        "u.id",
        "u.corrects_id",
        "who.username",
        "NULLIF(sub.department, '')",
    ]
    assert len(columns) == len(NAMES)
    # The twin of row()'s arithmetic: quantity and unit price to six places, a waived line's list
    # cost to the cent, both rounding half away from zero.
    unit = (
        "CASE WHEN r.id IS NULL THEN NULL WHEN u.gpu_seconds = 0 THEN round(r.price_per_gpu_hour, 6) "
        "ELSE round(r.price_per_gpu_hour"
        " + u.cpu_core_seconds::numeric / u.gpu_seconds * r.price_per_cpu_core_hour"
        " + u.memory_gb_seconds::numeric / u.gpu_seconds * r.price_per_memory_gb_hour, 6) END"
    )
    derived = f"""
        SELECT q.quantity, q.charged, q.sku, q.priced,
            CASE WHEN u.kind = 'credit' THEN NULL ELSE COALESCE(q.unit, 0) END AS price,
            CASE WHEN u.kind = 'credit' OR q.charged THEN u.amount
                 ELSE round(COALESCE(q.unit, 0) * q.quantity, 2) END AS list_cost
        FROM (SELECT
            CASE WHEN u.kind = 'credit' AND u.gpu_seconds = 0 THEN NULL
                 ELSE round(u.gpu_seconds::numeric / 3600, 6) END AS quantity,
            u.kind NOT IN ({", ".join(f"'{kind}'" for kind in NOT_CHARGED)}) AS charged,
            CASE WHEN g.slug IS NOT NULL AND c.slug IS NOT NULL THEN g.slug || '@' || c.slug
                 ELSE g.slug END AS sku,
            u.rate_card_id IS NOT NULL AND u.kind <> 'credit' AS priced,
            {unit} AS unit) AS q
    """
    where = "u.month = %(month)s"
    params = {
        "month": month,
        "ids": ids,
        "slugs": [names[pk][0] for pk in ids],
        "names": [names[pk][1] for pk in ids],
        "accounts": accounts,
        "departments": [look.departments.get(pk, "") for pk in ids],
        "invoice_accounts": [key[0] for key, _ in invoices],
        "invoice_months": [key[1] for key, _ in invoices],
        "invoice_numbers": [number for _, number in invoices],
        "issuer": look.issuer,
        "billing_start": _iso(month_begins(month)),
        "billing_end": _iso(month_begins(next_month(month))),
    }
    if tenants is not None:
        where += " AND u.tenant_id = ANY(%(tenants)s)"
        params["tenants"] = list(tenants)
    sql = f"""
        COPY (
        WITH names AS (
            SELECT * FROM unnest(
                %(ids)s::bigint[], %(slugs)s::text[], %(names)s::text[], %(accounts)s::bigint[],
                %(departments)s::text[]
            ) AS t(id, slug, name, account_id, department)),
        invoices AS (
            SELECT * FROM unnest(
                %(invoice_accounts)s::bigint[], %(invoice_months)s::date[], %(invoice_numbers)s::text[]
            ) AS t(account_id, month, number))
        SELECT {", ".join(columns)}
        FROM billing_usagerecord u
        JOIN names sub ON sub.id = u.tenant_id
        JOIN names acc ON acc.id = sub.account_id
        LEFT JOIN invoices inv ON inv.account_id = acc.id AND inv.month = u.month
        LEFT JOIN factory_gputype g ON g.id = u.gpu_type_id
        LEFT JOIN factory_cluster c ON c.id = u.cluster_id
        LEFT JOIN billing_ratecard r ON r.id = u.rate_card_id
        LEFT JOIN jobs_job j ON j.id = u.job_id
        LEFT JOIN auth_user who ON who.id = u.created_by_id
        CROSS JOIN LATERAL ({derived}) AS x
        WHERE {where}
        ) TO STDOUT WITH (FORMAT csv)
    """
    return sql, params
