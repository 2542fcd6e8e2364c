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

    def sku(self, gpu_type_id: int | None, cluster_id: int | None) -> tuple[str | None, str | None, str]:
        """A GPU type on a cluster: its SKU id, the cluster's region, and the words that describe
        a line of it after the GPU count."""
        gpu_type = self.gpu_types.get(gpu_type_id, "")
        cluster, region = self.clusters.get(cluster_id, ("", ""))
        sku = f"{gpu_type}@{cluster}" if gpu_type and cluster else gpu_type or None
        return sku, region or None, f" x {gpu_type} GPU job on {cluster}"


def sku_price_details(card: tuple[Decimal, Decimal, Decimal]) -> str:
    return f'{{"GpuCount": 1, "x_PricePerGpuHour": "{card[0]}"}}'


def sku_price_id(card_id: int) -> str:
    return f"rate-card-{card_id}"


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
    sku, region, described = look.sku(gpu_type_id, cluster_id)
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
    description = note or f"{gpus}{described}"
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
        region,
        region,
        job_uid,
        (job_name or None) if job_uid else None,
        "GPU job" if job_uid else None,
        SERVICE_CATEGORY,
        SERVICE_NAME,
        SERVICE_SUBCATEGORY,
        sku,
        GPU_HOURS if sku else None,  # SkuMeter
        sku_price_details(card) if priced and card else None,
        sku_price_id(card_id) if priced else None,
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


def csv_stream(month: date, tenants: Iterable[int] | None = None) -> Iterator[bytes]:
    """The month's FOCUS rows as UTF-8 CSV (nulls are empty cells), about a megabyte at a time.
    On PostgreSQL the database writes the rows itself (COPY ... TO STDOUT, the same rules as
    row() in SQL), in the order it reads the ledger: ten million lines stream without a sort, in
    constant memory here. Elsewhere rows come in ledger order, a chunk of lines at a time."""
    writer = csv.writer(_Echo(), lineterminator="\n")
    yield writer.writerow(NAMES).encode()
    look = Lookups.load()
    if connection.vendor == "postgresql":
        yield from copy_stream(month, look, tenants)
        return
    start, end = _iso(month_begins(month)), _iso(month_begins(next_month(month)))
    for chunk in chunks(month, tenants):
        yield "".join(writer.writerow(row(line, look, start, end)) for line in chunk).encode()


# How PostgreSQL runs the export: read the month's lines in storage order and hash what they
# join (the planner may otherwise walk an index in tenant order, a random read per line); enough
# memory to hash the jobs table at once; no JIT (compiling this wide query costs seconds and
# saves nothing on a scan of simple rows).
COPY_SETTINGS = {"jit": "off", "enable_mergejoin": "off", "enable_indexscan": "off", "work_mem": "64MB"}
BLOCK = 1 << 20


def copy_stream(month: date, look: Lookups, tenants: Iterable[int] | None = None) -> Iterator[bytes]:
    """The rows of copy_sql() as PostgreSQL writes them, handed on a megabyte at a time: the
    server sends a message per row, and here each is only appended to a buffer."""
    sql, params = copy_sql(month, look, tenants)
    with connection.cursor() as cursor:
        for name, value in COPY_SETTINGS.items():
            cursor.execute("SELECT set_config(%s, %s, false)", [name, value])
        try:
            with cursor.cursor.copy(sql, params) as copy:
                block = bytearray()
                for message in copy:
                    block += message
                    if len(block) >= BLOCK:
                        yield bytes(block)
                        block.clear()
                if block:
                    yield bytes(block)
        finally:
            for name in COPY_SETTINGS:
                cursor.execute(f"RESET {name}")


TIMESTAMP = """to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')"""


def copy_sql(month: date, look: Lookups, tenants: Iterable[int] | None = None) -> tuple[str, dict]:
    """COPY of the month's FOCUS rows: the SQL twin of row(), column for column.

    The ledger is read once, in storage order (no sort; in parallel where PostgreSQL can), and
    each line meets small tables hashed in memory, their texts made here as row() makes them:
    the tenants with their billing account and invoice, the SKUs (GPU type × cluster) and the
    rate cards; then its job and who made it. The inner query works out each line's values once;
    the outer one only places them, several in two columns (FOCUS and the validator's older names)."""
    where = "u.month = %(month)s"
    if tenants is not None:
        where += " AND u.tenant_id = ANY(%(tenants)s)"
    not_charged = " ".join(f"WHEN '{kind}' THEN ' ({label})'" for kind, label in NOT_CHARGED.items())
    waived = ", ".join(f"'{kind}'" for kind in NOT_CHARGED)
    # The twin of row()'s arithmetic: quantity and unit price to six places, a waived line's list
    # cost to the cent, both rounding half away from zero.
    quantity = "round(u.gpu_seconds::numeric / 3600, 6)"
    unit = (
        "CASE WHEN u.gpu_seconds = 0 THEN round(r.gpu, 6) ELSE round(r.gpu"
        " + u.cpu_core_seconds::numeric / u.gpu_seconds * r.core"
        " + u.memory_gb_seconds::numeric / u.gpu_seconds * r.gb, 6) END"
    )
    line = f"""
        SELECT u.id, u.job_id, u.energy_kwh, u.co2e_kg, u.corrects_id,
            NULLIF(u.cost_center, '') AS cost_center,
            u.kind = 'credit' AS credit,
            u.amount::text AS amount,
            COALESCE(NULLIF(u.currency, ''), 'XXX') AS currency,
            CASE WHEN u.kind <> 'credit' AND u.period_start < %(billing_start)s::timestamptz
                THEN 'Correction' END AS charge_class,
            COALESCE(NULLIF(u.note, ''), u.gpus || COALESCE(s.described, %(unknown_sku)s))
                || CASE u.kind {not_charged} ELSE '' END AS description,
            {TIMESTAMP.format("u.period_start")} AS period_start,
            {TIMESTAMP.format("u.period_end")} AS period_end,
            CASE WHEN u.kind = 'credit' AND u.gpu_seconds = 0 THEN NULL ELSE {quantity}::text END AS quantity,
            CASE WHEN u.kind = 'credit' THEN NULL WHEN r.id IS NULL THEN '0'
                WHEN r.flat IS NOT NULL THEN r.flat ELSE ({unit})::text END AS price,
            -- NULL where it is the billed cost (the outer query says so without a second text)
            CASE WHEN u.kind = 'credit' OR u.kind NOT IN ({waived}) THEN NULL
                WHEN r.id IS NULL THEN '0.00'
                ELSE round(({unit}) * {quantity}, 2)::text END AS waived_cost,
            CASE WHEN u.kind = 'credit' THEN NULL WHEN u.kind IN ({waived}) THEN 'Other'
                ELSE 'Standard' END AS pricing_category,
            s.sku, s.region,
            CASE WHEN u.kind <> 'credit' THEN r.details END AS sku_price_details,
            CASE WHEN u.kind <> 'credit' THEN r.price_id END AS sku_price_id,
            t.slug, t.name, t.account_slug, t.account_name, t.invoice, t.department,
            j.uid::text AS uid, NULLIF(j.name, '') AS job_name,
            who.username
        FROM billing_usagerecord u
        JOIN unnest(%(tenant_ids)s::bigint[], %(slugs)s::text[], %(names)s::text[],
                %(account_slugs)s::text[], %(account_names)s::text[], %(invoices)s::text[],
                %(departments)s::text[])
            AS t(id, slug, name, account_slug, account_name, invoice, department) ON t.id = u.tenant_id
        LEFT JOIN unnest(%(sku_gpu_types)s::bigint[], %(sku_clusters)s::bigint[], %(skus)s::text[],
                %(regions)s::text[], %(described)s::text[])
            AS s(gpu_type_id, cluster_id, sku, region, described)
            ON s.gpu_type_id = COALESCE(u.gpu_type_id, 0) AND s.cluster_id = COALESCE(u.cluster_id, 0)
        LEFT JOIN unnest(%(card_ids)s::bigint[], %(gpu_prices)s::numeric[], %(core_prices)s::numeric[],
                %(gb_prices)s::numeric[], %(flat_prices)s::text[], %(details)s::text[], %(price_ids)s::text[])
            AS r(id, gpu, core, gb, flat, details, price_id) ON r.id = u.rate_card_id
        LEFT JOIN jobs_job j ON j.id = u.job_id
        LEFT JOIN auth_user who ON who.id = u.created_by_id
        WHERE {where}
        OFFSET 0
    """
    columns = [
        "NULL",  # AvailabilityZone
        "x.amount",  # BilledCost
        "x.account_slug",
        "x.account_name",
        "'Tenant'",
        "x.currency",
        "%(billing_end)s",
        "%(billing_start)s",
        "CASE WHEN x.credit THEN 'Credit' ELSE 'Usage' END",
        "x.charge_class",
        "x.description",
        "'Usage-Based'",
        "x.period_end",
        "x.period_start",
        *["NULL"] * 7,  # CommitmentDiscount*: none offered
        "CASE WHEN NOT x.credit THEN x.quantity END",  # ConsumedQuantity
        f"CASE WHEN NOT x.credit THEN '{GPU_HOURS}' END",
        "COALESCE(x.waived_cost, x.amount)",  # ContractedCost
        "x.price",  # ContractedUnitPrice
        "x.amount",  # EffectiveCost
        "x.invoice",
        "%(issuer)s",  # InvoiceIssuerName
        "COALESCE(x.waived_cost, x.amount)",  # ListCost
        "x.price",  # ListUnitPrice
        "x.pricing_category",
        "x.quantity",  # PricingQuantity
        f"CASE WHEN x.quantity IS NOT NULL THEN '{GPU_HOURS}' END",
        "%(issuer)s",  # ProviderName
        "%(issuer)s",  # PublisherName
        "x.region",
        "x.region",
        "x.uid",  # ResourceId
        "x.job_name",
        "CASE WHEN x.uid IS NOT NULL THEN 'GPU job' END",
        f"'{SERVICE_CATEGORY}'",
        f"'{SERVICE_NAME}'",
        f"'{SERVICE_SUBCATEGORY}'",
        "x.sku",
        f"CASE WHEN x.sku IS NOT NULL THEN '{GPU_HOURS}' END",
        "x.sku_price_details",
        "x.sku_price_id",
        "x.slug",  # SubAccountId
        "x.name",
        "'Tenant'",
        "NULL",  # Tags
        "CASE WHEN x.credit THEN 'Adjustment' ELSE 'Usage' END",  # ChargeType
        "%(issuer)s",  # InvoiceIssuer
        "%(issuer)s",  # Provider
        "%(issuer)s",  # Publisher
        "x.uid",  # ResourceID
        "x.cost_center",
        "x.energy_kwh",
        "x.co2e_kg",
        "x.job_id",
        "x.id",
        "x.corrects_id",
        "x.username",
        "x.department",
    ]
    assert len(columns) == len(NAMES)
    sql = f"COPY (SELECT {', '.join(columns)} FROM ({line}) AS x) TO STDOUT WITH (FORMAT csv)"
    return sql, copy_params(month, look, tenants)


def copy_params(month: date, look: Lookups, tenants: Iterable[int] | None) -> dict:
    """The small tables of copy_sql(), their texts made by the functions row() uses."""
    ids = list(look.tenants)
    accounts = [look.tenants[pk][2] for pk in ids]
    skus = [(g, c, *look.sku(g, c)) for g in [0, *look.gpu_types] for c in [0, *look.clusters]]
    cards = list(look.cards.items())
    return {
        "month": month,
        "tenants": None if tenants is None else list(tenants),
        "billing_start": _iso(month_begins(month)),
        "billing_end": _iso(month_begins(next_month(month))),
        "issuer": look.issuer,
        "tenant_ids": ids,
        "slugs": [look.tenants[pk][0] for pk in ids],
        "names": [look.tenants[pk][1] for pk in ids],
        "account_slugs": [look.tenants[account][0] for account in accounts],
        "account_names": [look.tenants[account][1] for account in accounts],
        "invoices": [look.invoices.get((account, month)) for account in accounts],
        "departments": [look.departments.get(pk) for pk in ids],
        "sku_gpu_types": [sku[0] for sku in skus],
        "sku_clusters": [sku[1] for sku in skus],
        "skus": [sku[2] for sku in skus],
        "regions": [sku[3] for sku in skus],
        "described": [sku[4] for sku in skus],
        "unknown_sku": look.sku(None, None)[2],
        "card_ids": [pk for pk, _ in cards],
        "gpu_prices": [prices[0] for _, prices in cards],
        "core_prices": [prices[1] for _, prices in cards],
        "gb_prices": [prices[2] for _, prices in cards],
        # A card that prices only GPU-hours has one unit price, whatever the line.
        "flat_prices": [None if any(prices[1:]) else str(unit_price(prices, 0, 0, 0)) for _, prices in cards],
        "details": [sku_price_details(prices) for _, prices in cards],
        "price_ids": [sku_price_id(pk) for pk, _ in cards],
    }
