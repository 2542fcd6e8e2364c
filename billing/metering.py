"""Metering: turning a job attempt's real run time into ledger lines, exactly once.

A run is split at midnight UTC of each 1st. Each part becomes one line, priced by the rate card in
force when the part starts (a cluster's own price beats the GPU type's), rounded once. The unique
constraint on (job, attempt, part start) makes a repeat, a retry or a concurrent metering of the
same part a no-op, whatever kind the part would now be metered as; the monthly summary grows only
with lines really inserted. Lines for a month finance has closed go to the next open month, as
adjustments. An attempt that ends not to be charged credits what was charged for its earlier parts
by corrections: lines that name the line they correct, each at most once per kind.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal

from django.db import IntegrityError, connection, models, transaction
from django.utils import timezone

from factory.models import Cluster, GpuType
from factory.months import month_begins, month_of, next_month
from fleet import energy
from jobs.choices import ENDED_STATES, JobState
from jobs.models import Job

from .models import (
    ZERO,
    GridIntensity,
    MonthClose,
    MonthlySummary,
    RateCard,
    UsageKind,
    UsageRecord,
)

log = logging.getLogger(__name__)

BILLING_LOCK_ID = 0x41494642  # metering holds it shared, closing a month exclusive
HOUR = Decimal(3600)


def month_parts(start: datetime, end: datetime) -> Iterator[tuple[datetime, datetime]]:
    """[start, end) cut at midnight UTC of each 1st."""
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    while start < end:
        boundary = month_begins(next_month(month_of(start)))
        part_end = min(end, boundary)
        yield start, part_end
        start = part_end


def rate_for(
    gpu_type_id: int,
    cluster_id: int | None,
    day: date,
    account_id: int | None = None,
    currency: str | None = None,
) -> RateCard | None:
    """The price in force on `day`, in the account's currency only: the account's own price for
    the cluster, its own price, the cluster's price, then the GPU type's price."""
    cards = RateCard.objects.filter(gpu_type_id=gpu_type_id, effective_from__lte=day).filter(
        models.Q(effective_until__isnull=True) | models.Q(effective_until__gt=day)
    )
    if currency is not None:
        cards = cards.filter(currency=currency)
    order = [(None, cluster_id), (None, None)]
    if account_id is not None:
        order = [(account_id, cluster_id), (account_id, None), *order]
    for account, cluster in order:
        found = cards.filter(billing_account_id=account, cluster_id=cluster).first()
        if found is not None:
            return found
    return None


@dataclasses.dataclass
class Pricing:
    """Rates, power and grid intensity looked up once per batch, not once per line."""

    rates: dict[tuple, RateCard | None] = dataclasses.field(default_factory=dict)
    clusters: dict[int, Cluster] = dataclasses.field(default_factory=dict)
    gpu_types: dict[int, GpuType] = dataclasses.field(default_factory=dict)
    intensity: dict[str, Decimal] | None = None
    accounts: dict[int, tuple[int, str]] | None = None  # tenant id: (billing account id, currency)
    measured: dict[tuple[int, int], energy.JobUse] = dataclasses.field(default_factory=dict)
    measured_asked: set[tuple[int, int]] = dataclasses.field(default_factory=set)
    # Attempts whose telemetry could not be asked (its source was down): why.
    telemetry_gaps: dict[tuple[int, int], str] = dataclasses.field(default_factory=dict)

    def load_measured(self, pairs, windows: dict[tuple[int, int], energy.Window] | None = None) -> None:
        """Measured energy of many job attempts at once (a batch of metering)."""
        pairs = [p for p in pairs if p not in self.measured_asked]
        found = energy.measure(pairs, windows)
        self.measured.update(found.uses)
        self.telemetry_gaps.update(found.unavailable)
        self.measured_asked.update(pairs)

    def measured_kwh(self, job_id: int, attempt: int, window: energy.Window | None = None) -> Decimal | None:
        """kWh the attempt's GPUs measured themselves, or None where telemetry did not see it."""
        if (job_id, attempt) not in self.measured_asked:
            self.load_measured([(job_id, attempt)], {(job_id, attempt): window} if window else None)
        use = self.measured.get((job_id, attempt))
        return use.kwh if use else None

    def energy_note(self, job_id: int, attempt: int) -> str:
        """What a line with estimated energy says when telemetry was there but could not be asked."""
        gap = self.telemetry_gaps.get((job_id, attempt))
        return f"energy estimated: {gap}" if gap else ""

    def rate(self, gpu_type_id: int, cluster_id: int, day: date, tenant_id: int) -> RateCard | None:
        account_id, currency = self.account(tenant_id)
        key = (gpu_type_id, cluster_id, day, account_id)
        if key not in self.rates:
            self.rates[key] = rate_for(gpu_type_id, cluster_id, day, account_id, currency)
        return self.rates[key]

    def account(self, tenant_id: int) -> tuple[int, str]:
        if self.accounts is None or tenant_id not in self.accounts:
            from django.conf import settings

            from .invoicing import billing_accounts
            from .models import BillingAccount

            currencies = dict(BillingAccount.objects.values_list("tenant_id", "currency"))
            self.accounts = {
                pk: (root.pk, currencies.get(root.pk, settings.FACTORY_BILLING_CURRENCY))
                for pk, root in billing_accounts().items()
            }
        return self.accounts[tenant_id]

    def cluster(self, cluster_id: int) -> Cluster:
        if cluster_id not in self.clusters:
            self.clusters[cluster_id] = Cluster.objects.get(pk=cluster_id)
        return self.clusters[cluster_id]

    def gpu_type(self, gpu_type_id: int) -> GpuType:
        if gpu_type_id not in self.gpu_types:
            self.gpu_types[gpu_type_id] = GpuType.objects.get(pk=gpu_type_id)
        return self.gpu_types[gpu_type_id]

    def grams_per_kwh(self, region: str) -> Decimal:
        if self.intensity is None:
            self.intensity = dict(GridIntensity.objects.values_list("region", "grams_co2e_per_kwh"))
        return self.intensity.get(region, ZERO)


def line_for(
    job: Job,
    attempt: int,
    start: datetime,
    end: datetime,
    kind: str,
    pricing: Pricing,
    measured_kwh: Decimal | None = None,
) -> UsageRecord:
    """One ledger line. Its energy is what the GPUs measured (their share for this part of the
    run, × the data centre's PUE) where telemetry saw the attempt, else board power × time × PUE;
    the line says which, and its CO2e follows the figure used."""
    seconds = int((end - start).total_seconds())
    hours = Decimal(seconds) / HOUR
    cluster = pricing.cluster(job.cluster_id)
    gpu_type = pricing.gpu_type(job.gpu_type_id)
    card = pricing.rate(job.gpu_type_id, job.cluster_id, start.date(), job.tenant_id)
    amount = ZERO
    if card is not None and kind in (UsageKind.USAGE, UsageKind.ADJUSTMENT):
        amount = card.charge(gpus=job.gpu_count, cpus=job.cpus, memory_gb=job.memory_gb, hours=hours)
    if measured_kwh is not None:
        kwh = measured_kwh * cluster.pue
    else:
        kwh = Decimal(job.gpu_count) * Decimal(gpu_type.board_power_watts) / 1000 * hours * cluster.pue
    return UsageRecord(
        job=job,
        attempt=attempt,
        kind=kind,
        month=month_of(start),  # until `record` finds it closed
        period_start=start,
        period_end=end,
        tenant_id=job.tenant_id,
        cost_center=job.tenant.cost_center,
        cluster_id=job.cluster_id,
        gpu_type_id=job.gpu_type_id,
        gpus=job.gpu_count,
        gpu_seconds=job.gpu_count * seconds,
        cpu_core_seconds=job.cpus * seconds,
        memory_gb_seconds=job.memory_gb * seconds,
        rate_card=card,
        currency=card.currency if card else "",
        amount=amount,
        energy_kwh=kwh.quantize(Decimal("0.0001")),
        energy_measured=measured_kwh is not None,
        co2e_kg=(kwh * pricing.grams_per_kwh(cluster.region) / 1000).quantize(Decimal("0.0001")),
    )


SUMMARY_KEY = ("month", "tenant_id", "cost_center", "gpu_type_id", "currency")
SUMMARY_VALUES = ("gpu_seconds", "charged_gpu_seconds", "amount", "energy_kwh", "co2e_kg", "lines", "jobs")


def record(lines: list[UsageRecord]) -> list[UsageRecord]:
    """Insert the lines that are not in the ledger yet and add them to the monthly summary, in one
    transaction, with a fixed number of statements per batch. Returns the lines inserted."""
    if not lines:
        return []
    with transaction.atomic():
        billing_lock(shared=True)
        into_open_months(lines)
        new = without_metered(lines)
        try:
            with transaction.atomic():
                UsageRecord.objects.bulk_create(new)
        except IntegrityError:
            # Another worker metered some of these meanwhile: one at a time, the loser skips.
            new = [line for line in new if insert_one(line)]
        add_to_summary(new)
    return new


def into_open_months(lines: list[UsageRecord]) -> None:
    """A line for a closed month goes to the first open month after it; a part of a run metered
    there is late usage, an adjustment. Decided under the billing lock: no month closes between
    this and the insert."""
    closed = set(MonthClose.objects.values_list("month", flat=True))
    for line in lines:
        natural = line.month
        while line.month in closed:
            line.month = next_month(line.month)
        if line.month != natural and line.corrects_id is None and line.job_id is not None:
            late = f"late usage of {natural:%Y-%m}, a closed month"
            line.note = f"{late}; {line.note}"[:300] if line.note else late
            if line.kind == UsageKind.USAGE:
                line.kind = UsageKind.ADJUSTMENT


def ledger_key(line: UsageRecord) -> tuple:
    """A line's place in the ledger, as the unique constraints see it: a period of a job attempt
    (whatever the kind), or a correction of one line in one way."""
    if line.corrects_id is not None:
        return ("correction", line.corrects_id, line.kind)
    return ("period", line.job_id, line.attempt, line.period_start)


def without_metered(lines: list[UsageRecord]) -> list[UsageRecord]:
    periods = [line for line in lines if line.job_id and line.corrects_id is None]
    corrections = [line for line in lines if line.corrects_id is not None]
    existing = {
        ("period", *key)
        for key in UsageRecord.objects.filter(
            job_id__in={line.job_id for line in periods}, corrects__isnull=True
        ).values_list("job_id", "attempt", "period_start")
    } | {
        ("correction", *key)
        for key in UsageRecord.objects.filter(
            corrects_id__in={line.corrects_id for line in corrections}
        ).values_list("corrects_id", "kind")
    }
    fresh, seen = [], set()
    for line in lines:
        key = ledger_key(line)
        if line.job_id and (key in existing or key in seen):
            continue
        seen.add(key)
        fresh.append(line)
    return fresh


def insert_one(line: UsageRecord) -> bool:
    try:
        with transaction.atomic():
            line.pk = None
            line.save(force_insert=True)
    except IntegrityError:
        return False  # metered before: exactly once
    return True


def add_to_summary(lines: list[UsageRecord]) -> None:
    """Add inserted lines to the monthly summary rows: one upsert per summary key touched."""
    totals: dict[tuple, dict] = {}
    firsts = first_lines_of_jobs(lines)
    for line in lines:
        key = tuple(getattr(line, name) for name in SUMMARY_KEY)
        row = totals.setdefault(key, dict.fromkeys(SUMMARY_VALUES, 0))
        row["gpu_seconds"] += line.gpu_seconds
        row["charged_gpu_seconds"] += line.gpu_seconds if line.charged else 0
        row["amount"] += line.amount
        row["energy_kwh"] += line.energy_kwh
        row["co2e_kg"] += line.co2e_kg
        row["lines"] += 1
        row["jobs"] += int(line.pk in firsts)
    for key, values in totals.items():
        upsert_summary(dict(zip(SUMMARY_KEY, key, strict=True)), values)


def first_lines_of_jobs(lines: list[UsageRecord]) -> set[int]:
    """Ids of the lines that bring a job into a summary row for the first time (job counts)."""
    by_job = {}
    for line in sorted(lines, key=lambda line: line.pk or 0):
        if line.job_id is not None:
            by_job.setdefault((line.job_id, *(getattr(line, name) for name in SUMMARY_KEY)), line.pk)
    if not by_job:
        return set()
    earlier = set(
        UsageRecord.objects.filter(job_id__in={key[0] for key in by_job})
        .exclude(pk__in=[line.pk for line in lines])
        .values_list("job_id", *SUMMARY_KEY)
    )
    return {pk for key, pk in by_job.items() if key not in earlier}


def upsert_summary(key: dict, values: dict) -> None:
    if connection.vendor == "postgresql":
        table = MonthlySummary._meta.db_table
        columns = [*key, *values]
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))}) "
                f"ON CONFLICT ({', '.join(SUMMARY_KEY)}) DO UPDATE SET "
                + ", ".join(f"{name} = {table}.{name} + EXCLUDED.{name}" for name in values),
                [*key.values(), *values.values()],
            )
        return
    summary, _ = MonthlySummary.objects.get_or_create(**key)
    MonthlySummary.objects.filter(pk=summary.pk).update(**{k: models.F(k) + v for k, v in values.items()})


def billing_lock(*, shared: bool) -> None:
    if connection.vendor == "postgresql":
        function = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT {function}(%s)", [BILLING_LOCK_ID])


def lines_for_attempt(
    job: Job,
    attempt: int,
    started_at: datetime | None,
    ended_at: datetime | None,
    kind: str,
    pricing: Pricing,
) -> list[UsageRecord]:
    if started_at is None or ended_at is None or ended_at <= started_at:
        return []
    window = energy.Window(job.cluster_id, started_at, ended_at)
    measured = pricing.measured_kwh(job.pk, attempt, window)
    note = pricing.energy_note(job.pk, attempt) if measured is None else ""
    total = Decimal((ended_at - started_at).total_seconds())
    lines = []
    for start, end in month_parts(started_at, ended_at):
        share = None if measured is None else measured * Decimal((end - start).total_seconds()) / total
        line = line_for(job, attempt, start, end, kind, pricing, share)
        line.note = note[:300]
        lines.append(line)
    return lines


def final_kind(job: Job, requeued: bool) -> str:
    if requeued:
        return UsageKind.PREEMPTED
    if job.platform_fault:
        return UsageKind.PLATFORM_FAULT
    return UsageKind.USAGE


def meter_release(
    job_id: int,
    attempt: int,
    cluster_id: int | None,
    started_at,
    ended_at,
    requeued: bool,
    *,
    platform_fault: bool = False,
) -> list[UsageRecord]:
    """Meter a job attempt that stopped holding GPUs (or, with `platform_fault`, one found
    afterwards to have failed on faulty hardware: its charges are credited). Idempotent."""
    job = Job.objects.select_related("tenant").filter(pk=job_id).first()
    if job is None or cluster_id is None:
        return []
    job.cluster_id = cluster_id  # a requeued job has already lost it
    pricing = Pricing()
    kind = UsageKind.PLATFORM_FAULT if platform_fault else final_kind(job, requeued)
    return record(lines_for_release(job, attempt, started_at, ended_at, kind, pricing))


def lines_for_release(
    job: Job, attempt: int, started_at: datetime, ended_at: datetime, kind: str, pricing: Pricing
) -> list[UsageRecord]:
    """Every part of an attempt that stopped, and the corrections of its accrued charges if it is
    not to be charged; `record` keeps only what the ledger does not have yet."""
    lines = lines_for_attempt(job, attempt, started_at, ended_at, kind, pricing)
    if kind != UsageKind.USAGE:
        lines += corrections_of_accrued_charges(job, attempt, kind)
    return lines


def corrections_of_accrued_charges(job: Job, attempt: int, kind: str) -> list[UsageRecord]:
    """Parts charged while the attempt ran (month rollovers, billed in their month or late in the
    next open one) that its end says must not be charged: each is credited back, and its time
    recorded as `kind`, by two lines that name it. The ledger is never edited; the part itself is
    not metered again."""
    corrections = []
    month = month_of()
    why = UsageKind(kind).label.lower()
    charged = UsageRecord.objects.filter(
        job=job, attempt=attempt, corrects__isnull=True, kind__in=[UsageKind.USAGE, UsageKind.ADJUSTMENT]
    )
    for line in charged:
        same = {
            "job": job,
            "attempt": attempt,
            "corrects": line,
            "month": month,
            "period_start": line.period_start,
            "period_end": line.period_end,
            "tenant_id": line.tenant_id,
            "cost_center": line.cost_center,
            "cluster_id": line.cluster_id,
            "gpu_type_id": line.gpu_type_id,
            "gpus": line.gpus,
            "rate_card": line.rate_card,
            "currency": line.currency,
        }
        corrections += [
            UsageRecord(
                **same,
                kind=UsageKind.ADJUSTMENT,
                gpu_seconds=-line.gpu_seconds,
                cpu_core_seconds=-line.cpu_core_seconds,
                memory_gb_seconds=-line.memory_gb_seconds,
                amount=-line.amount,
                note=f"credit: {why}",
            ),
            UsageRecord(
                **same,
                kind=kind,
                gpu_seconds=line.gpu_seconds,
                cpu_core_seconds=line.cpu_core_seconds,
                memory_gb_seconds=line.memory_gb_seconds,
                note="time of a credited charge",
            ),
        ]
    return corrections


def meter_running(now: datetime | None = None) -> int:
    """Accrue the months that running jobs have finished (a job running over a month boundary is
    billed for the old month when it ends, not when it finishes)."""
    now = now or timezone.now()
    this_month = month_begins(month_of(now))
    pricing = Pricing()
    lines: list[UsageRecord] = []
    running = Job.objects.filter(state=JobState.RUNNING, started_at__lt=this_month).select_related("tenant")
    for job in running:
        lines += lines_for_attempt(job, job.attempt, job.started_at, this_month, UsageKind.USAGE, pricing)
    return len(record(lines))


def unmetered_jobs(since=None) -> models.QuerySet:
    """Ended jobs whose final attempt is not all in the ledger; with `since`, only those whose
    state changed (or that were found to have failed on faulty hardware) since then, read through
    the partial index on recently ended jobs rather than the whole history. Months accrued while
    the job ran do not count: an attempt is in the ledger once its last part is, as its end says
    (charged, or recorded as a platform failure), since a release records all that is missing at
    once."""
    last_part = UsageRecord.objects.filter(
        job=models.OuterRef("pk"), attempt=models.OuterRef("attempt"), period_end=models.OuterRef("ended_at")
    )
    charged = models.Exists(last_part.filter(kind__in=[UsageKind.USAGE, UsageKind.ADJUSTMENT]))
    not_charged = models.Exists(last_part.filter(kind=UsageKind.PLATFORM_FAULT))
    jobs = Job.objects.filter(state__in=ENDED_STATES)
    if since is not None:
        jobs = jobs.filter(updated_at__gte=since)
    return (
        jobs.filter(started_at__isnull=False, ended_at__gt=models.F("started_at"), cluster__isnull=False)
        .filter(models.Q(platform_fault=False) & ~charged | models.Q(platform_fault=True) & ~not_charged)
        .order_by()
    )


def meter_finished(limit: int = 5000, since=None) -> int:
    """The safety net behind the release signal: meter ended jobs whose final attempt is not all in
    the ledger (a worker died between the job's end and its metering). The periodic pass looks at
    jobs changed within FACTORY_METERING_LOOKBACK (`since`), a rarer one at every job (none)."""
    pricing = Pricing()
    missing = list(unmetered_jobs(since).select_related("tenant")[:limit])
    lines: list[UsageRecord] = []
    pricing.load_measured((job.pk, job.attempt) for job in missing)
    for job in missing:
        lines += lines_for_release(
            job, job.attempt, job.started_at, job.ended_at, final_kind(job, False), pricing
        )
    return len(record(lines))


@dataclasses.dataclass(frozen=True)
class JobCost:
    amounts: dict[str, Decimal]  # per currency, priced parts only: other currencies are other money
    energy_kwh: Decimal
    co2e_kg: Decimal
    energy_measured: bool = False  # by the GPUs' own counters, not board power × time


def live_cost(job: Job, now: datetime | None = None, pricing: Pricing | None = None) -> JobCost:
    """What a job has cost so far: priced like its ledger lines will be (running jobs are not in the
    ledger until they end)."""
    if job.started_at is None or job.cluster_id is None:
        return JobCost({}, ZERO, ZERO)
    end = job.ended_at or now or timezone.now()
    lines = lines_for_attempt(
        job, job.attempt, job.started_at, end, final_kind(job, False), pricing or Pricing()
    )
    amounts: dict[str, Decimal] = {}
    for line in lines:
        if line.currency:
            amounts[line.currency] = amounts.get(line.currency, ZERO) + line.amount
    return JobCost(
        amounts=amounts,
        energy_kwh=sum((line.energy_kwh for line in lines), ZERO),
        co2e_kg=sum((line.co2e_kg for line in lines), ZERO),
        energy_measured=bool(lines) and all(line.energy_measured for line in lines),
    )
