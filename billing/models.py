"""Prices, the immutable usage ledger, closed months and budget alerts.

Money is Decimal with an explicit currency. Each ledger line is rounded once, half-even to the cent;
every total is a sum of rounded lines, so reports add up exactly.
"""

from __future__ import annotations

from datetime import date, timedelta
from decimal import ROUND_HALF_EVEN, Decimal

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator, RegexValidator
from django.db import models, transaction
from django.utils import timezone

from factory.models import Cluster, GpuType, Tenant
from jobs.models import Job

from .querysets import InvoiceQuerySet, RateCardQuerySet, UsageRecordQuerySet

CENT = Decimal("0.01")
ZERO = Decimal(0)
currency_validator = RegexValidator(r"^[A-Z]{3}$", "Use a three-letter ISO 4217 currency code, e.g. EUR.")


def to_cents(amount: Decimal) -> Decimal:
    """The one rounding rule: half-even to the cent, applied once per ledger line."""
    return amount.quantize(CENT, rounding=ROUND_HALF_EVEN)


class BillingAccount(models.Model):
    """A billing account's currency: a top-level tenant is billed in one currency, this one, or
    FACTORY_BILLING_CURRENCY without a row. Only prices in it bill the account's usage."""

    tenant = models.OneToOneField(Tenant, on_delete=models.PROTECT, related_name="billing_account")
    currency = models.CharField(max_length=3, validators=[currency_validator])
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["tenant__slug"]

    def __str__(self) -> str:
        return f"{self.tenant} billed in {self.currency}"

    def clean(self) -> None:
        if self.tenant_id and self.tenant.parent_id:
            raise ValidationError({"tenant": "A department or team is billed to the top of its tenant tree."})
        if self.pk and self.currency:
            billed = set(
                UsageRecord.objects.filter(tenant__in=self.tenant_tree())
                .exclude(currency="")
                .exclude(currency=self.currency)
                .values_list("currency", flat=True)[:1]
            )
            if billed:
                raise ValidationError(
                    {
                        "currency": f"{self.tenant} has been billed in {billed.pop()}: "
                        "its currency cannot change."
                    }
                )

    def tenant_tree(self) -> list[int]:
        from .invoicing import billing_accounts

        return [pk for pk, root in billing_accounts().items() if root.pk == self.tenant_id]


def currency_of(account: Tenant) -> str:
    """The one currency a billing account is billed in."""
    row = BillingAccount.objects.filter(tenant=account).values_list("currency", flat=True).first()
    return row or settings.FACTORY_BILLING_CURRENCY


class RateCard(models.Model):
    """Price of a GPU-hour of one type, optionally on one cluster (which beats the GPU-type price),
    plus optional CPU-core-hour and memory GB-hour prices, effective over [from, until).

    Once a card has priced a ledger line it is billed: what it says is on those lines and the
    invoices made of them, so it is never changed or deleted. A new price is a new card from a
    date (`supersede`, which ends this one that day); a billed card may only be ended, after the
    last day it priced."""

    gpu_type = models.ForeignKey(GpuType, on_delete=models.PROTECT, related_name="rate_cards")
    cluster = models.ForeignKey(
        Cluster,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="rate_cards",
        help_text="Empty: the price of this GPU type on every cluster without its own.",
    )
    billing_account = models.ForeignKey(
        Tenant,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="Empty: the price for every billing account in its currency; set: one account's own price, "
        "which beats the others.",
    )
    currency = models.CharField(max_length=3, validators=[currency_validator])
    price_per_gpu_hour = models.DecimalField(
        max_digits=12, decimal_places=4, validators=[MinValueValidator(ZERO)]
    )
    price_per_cpu_core_hour = models.DecimalField(
        max_digits=12, decimal_places=4, default=ZERO, validators=[MinValueValidator(ZERO)]
    )
    price_per_memory_gb_hour = models.DecimalField(
        max_digits=12, decimal_places=4, default=ZERO, validators=[MinValueValidator(ZERO)]
    )
    effective_from = models.DateField()
    effective_until = models.DateField(
        null=True, blank=True, help_text="Exclusive; empty: until further notice."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    objects = RateCardQuerySet.as_manager()

    # What finance sets, in the form and the API alike.
    EDITABLE = (
        "gpu_type",
        "cluster",
        "billing_account",
        "currency",
        "price_per_gpu_hour",
        "price_per_cpu_core_hour",
        "price_per_memory_gb_hour",
        "effective_from",
        "effective_until",
    )
    # What a new price from a date may change (the rest says which price it is).
    PRICES = ("price_per_gpu_hour", "price_per_cpu_core_hour", "price_per_memory_gb_hour")
    # What stays as billed: all but its end.
    BILLED_FIXED = tuple(name for name in EDITABLE if name != "effective_until")

    class Meta:
        ordering = ["gpu_type__slug", "cluster__slug", "-effective_from"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(effective_until__isnull=True)
                | models.Q(effective_until__gt=models.F("effective_from")),
                name="rate_card_range_not_empty",
            ),
            models.CheckConstraint(
                condition=models.Q(price_per_gpu_hour__gte=0), name="rate_card_price_not_negative"
            ),
        ]

    def __str__(self) -> str:
        where = f"@{self.cluster}" if self.cluster_id else ""
        price = f"{self.price_per_gpu_hour} {self.currency}/GPU-h"
        return f"{self.gpu_type}{where}: {price} from {self.effective_from}"

    def save(self, *args, **kwargs) -> None:
        self.check_billed()  # whatever path saves it (the form, the API and the admin clean first)
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        last = self.last_billed_day()
        if last is not None:
            raise ValidationError(
                f"This price has priced usage up to {last}: it cannot be deleted. End it, or add a "
                "new price from a date."
            )
        return super().delete(*args, **kwargs)

    def charge(self, *, gpus: int, cpus: int, memory_gb: int, hours: Decimal) -> Decimal:
        """What this card charges for these resources held for `hours`, to the cent: the one
        pricing rule, for ledger lines and estimates alike."""
        return to_cents(
            gpus * hours * self.price_per_gpu_hour
            + cpus * hours * self.price_per_cpu_core_hour
            + memory_gb * hours * self.price_per_memory_gb_hour
        )

    def clean(self) -> None:
        if not self.currency:
            raise ValidationError({"currency": "A price needs a currency."})
        if self.effective_until and self.effective_from and self.effective_until <= self.effective_from:
            raise ValidationError({"effective_until": "The end must come after the start."})
        if self.billing_account_id:
            account = self.billing_account
            if account.parent_id:
                raise ValidationError(
                    {"billing_account": "Prices are set for a billing account: the top of a tenant tree."}
                )
            billed_in = currency_of(account)
            if self.currency != billed_in:
                raise ValidationError(
                    {
                        "currency": f"{account} is billed in {billed_in}: "
                        f"a price for it in {self.currency} is refused."
                    }
                )
        self.check_billed()
        if self.gpu_type_id and self.effective_from and self.overlapping().exists():
            raise ValidationError(
                {"effective_from": "Another price for this GPU type and cluster covers part of this period."}
            )

    def last_billed_day(self) -> date | None:
        """The last day this card priced a ledger line on; None if it never has."""
        if self.pk is None:
            return None
        return RateCard.objects.filter(pk=self.pk).billed_through().get(self.pk)

    def check_billed(self) -> None:
        """ValidationError, per field, if this is a billed card changed in anything but its end,
        or ended on or before the last day it priced."""
        last = self.last_billed_day()
        if last is None:
            return
        stored = RateCard.objects.get(pk=self.pk)
        errors = {}
        for name in self.BILLED_FIXED:
            attname = self._meta.get_field(name).attname
            if getattr(stored, attname) != getattr(self, attname):
                errors[name] = (
                    f"This price has billed usage up to {last}: it cannot be changed. Add a new "
                    "price from a date instead (this one then ends that day)."
                )
        if self.effective_until is not None and self.effective_until <= last:
            errors["effective_until"] = (
                f"This price has billed usage up to {last}: it can end on {last + timedelta(days=1)} "
                "at the earliest."
            )
        if errors:
            raise ValidationError(errors)

    @transaction.atomic
    def supersede(self, effective_from: date, **prices) -> RateCard:
        """A new price from `effective_from`: this card ends that day (refused on a day it has
        already priced) and a new one, the same but for `prices`, starts then and ends when this
        one did. Returns the new card."""
        unknown = set(prices) - set(self.PRICES)
        if unknown:
            raise ValueError(f"Not a price: {', '.join(sorted(unknown))}")
        old = RateCard.objects.select_for_update().get(pk=self.pk)
        if effective_from <= old.effective_from:
            raise ValidationError(
                {"effective_from": f"A new price starts after the one it replaces ({old.effective_from})."}
            )
        if old.effective_until is not None and effective_from >= old.effective_until:
            raise ValidationError(
                {"effective_from": f"The price it replaces ends on {old.effective_until}: add a new one."}
            )
        last = old.last_billed_day()
        if last is not None and effective_from <= last:
            raise ValidationError(
                {
                    "effective_from": f"The price it replaces has billed usage up to {last}: a new price "
                    f"can start on {last + timedelta(days=1)} at the earliest."
                }
            )
        new = RateCard(**{name: getattr(old, name) for name in self.EDITABLE})
        for name, value in prices.items():
            setattr(new, name, value)
        new.effective_from = effective_from
        old.effective_until = effective_from
        old.full_clean()
        old.save(update_fields=["effective_until"])
        new.full_clean()
        new.save()
        self.effective_until = effective_from
        return new

    def overlapping(self):
        cards = RateCard.objects.filter(
            gpu_type_id=self.gpu_type_id,
            cluster_id=self.cluster_id,
            billing_account_id=self.billing_account_id,
            currency=self.currency,  # accounts billed in other currencies have their own prices
        ).exclude(pk=self.pk)
        if self.effective_until:
            cards = cards.filter(effective_from__lt=self.effective_until)
        return cards.filter(
            models.Q(effective_until__isnull=True) | models.Q(effective_until__gt=self.effective_from)
        )


class GridIntensity(models.Model):
    """Carbon intensity of the electricity grid in a region, set by admins."""

    region = models.CharField(max_length=64, unique=True)
    grams_co2e_per_kwh = models.DecimalField(
        max_digits=8, decimal_places=2, validators=[MinValueValidator(ZERO)]
    )

    class Meta:
        ordering = ["region"]
        verbose_name_plural = "grid intensities"

    def __str__(self) -> str:
        return f"{self.region}: {self.grams_co2e_per_kwh} g/kWh"


class UsageKind(models.TextChoices):
    USAGE = "usage", "Usage"
    ADJUSTMENT = "adjustment", "Adjustment"
    PREEMPTED = "preempted", "Preempted (not charged)"
    PLATFORM_FAULT = "platform_fault", "Platform failure (not charged)"
    CREDIT = "credit", "Credit"
    CORRECTION = "correction", "Correction"


# Kinds whose amount is billed (the others record time that is not charged).
CHARGED_KINDS = (UsageKind.USAGE, UsageKind.ADJUSTMENT, UsageKind.CREDIT, UsageKind.CORRECTION)


class UsageRecord(models.Model):
    """One immutable ledger line: a job attempt's use within one calendar month (UTC)."""

    job = models.ForeignKey(
        Job, null=True, blank=True, on_delete=models.PROTECT, related_name="usage_records"
    )
    attempt = models.PositiveIntegerField(default=0)
    kind = models.CharField(max_length=16, choices=UsageKind.choices, default=UsageKind.USAGE)
    month = models.DateField(help_text="First day of the month the line is billed in.")
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="usage_records")
    cost_center = models.CharField(max_length=64, blank=True)
    # Empty only on a credit granted as an amount (no GPU type) or on no cluster.
    cluster = models.ForeignKey(
        Cluster, null=True, blank=True, on_delete=models.PROTECT, related_name="usage_records"
    )
    gpu_type = models.ForeignKey(
        GpuType, null=True, blank=True, on_delete=models.PROTECT, related_name="usage_records"
    )
    gpus = models.PositiveIntegerField()
    gpu_seconds = models.BigIntegerField()
    cpu_core_seconds = models.BigIntegerField(default=0)
    memory_gb_seconds = models.BigIntegerField(default=0)
    rate_card = models.ForeignKey(RateCard, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    currency = models.CharField(max_length=3, blank=True)
    amount = models.DecimalField(max_digits=14, decimal_places=2, default=ZERO)
    energy_kwh = models.DecimalField(max_digits=14, decimal_places=4, default=ZERO)
    energy_measured = models.BooleanField(
        default=False,
        help_text="The kWh come from the GPUs' own energy counters (× PUE), not board power × time.",
    )
    co2e_kg = models.DecimalField(max_digits=14, decimal_places=4, default=ZERO)
    note = models.CharField(max_length=300, blank=True)
    corrects = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="corrections",
        help_text="The line that this one corrects: a credit of its charge, its time recorded as not "
        "charged, or finance's correction of it.",
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="Who granted the credit or made the correction; empty for metered lines.",
    )
    created_at = models.DateTimeField(default=timezone.now)

    objects = UsageRecordQuerySet.as_manager()

    class Meta:
        ordering = ["id"]
        constraints = [
            # Exactly once: a job attempt's period (its part of a natural month) is metered into one
            # line, whatever its kind and however often metering runs; lines without a job are exempt.
            models.UniqueConstraint(
                fields=["job", "attempt", "period_start"],
                condition=models.Q(job__isnull=False, corrects__isnull=True),
                name="one_ledger_line_per_job_period",
            ),
            # ... and corrected at most once in each way.
            models.UniqueConstraint(
                fields=["corrects", "kind"],
                condition=models.Q(corrects__isnull=False),
                name="one_correction_per_line_and_kind",
            ),
        ]
        indexes = [
            models.Index(fields=["month", "tenant", "gpu_type"], name="usage_month_tenant_gpu"),
        ]

    def __str__(self) -> str:
        return f"{self.month:%Y-%m} {self.tenant} {self.gpu_type} {self.amount} {self.currency}"

    @property
    def gpu_hours(self) -> Decimal:
        return Decimal(self.gpu_seconds) / 3600

    @property
    def charged(self) -> bool:
        return self.kind in CHARGED_KINDS

    @property
    def billing_period_start(self):
        from factory.months import month_begins

        return month_begins(self.month)

    @property
    def is_correction(self) -> bool:
        """A charge of an earlier billing period than the one it is billed in (late usage of a
        closed month, a correction or credit-back of a line billed before): FOCUS's ChargeClass
        "Correction". A credit granted for an earlier period is a new charge, not a correction."""
        return self.kind != UsageKind.CREDIT and self.period_start < self.billing_period_start


class MonthlySummary(models.Model):
    """Running totals of the ledger per month, tenant, cost center and GPU type, kept in the same
    transaction as each ledger line: a month's report reads these few rows, not millions of lines."""

    month = models.DateField()
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="+")
    cost_center = models.CharField(max_length=64, blank=True)
    gpu_type = models.ForeignKey(GpuType, null=True, on_delete=models.PROTECT, related_name="+")
    currency = models.CharField(max_length=3, blank=True)
    gpu_seconds = models.BigIntegerField(default=0)
    charged_gpu_seconds = models.BigIntegerField(default=0)
    amount = models.DecimalField(max_digits=16, decimal_places=2, default=ZERO)
    energy_kwh = models.DecimalField(max_digits=16, decimal_places=4, default=ZERO)
    co2e_kg = models.DecimalField(max_digits=16, decimal_places=4, default=ZERO)
    lines = models.BigIntegerField(default=0)
    jobs = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["month", "tenant", "cost_center", "gpu_type", "currency"],
                name="one_summary_per_key",
                nulls_distinct=False,  # credits without a GPU type add up in one row too
            )
        ]

    def __str__(self) -> str:
        return f"{self.month:%Y-%m} {self.tenant_id}/{self.gpu_type_id}: {self.amount} {self.currency}"


class MonthClose(models.Model):
    """A closed month: its report never changes again; later corrections land in the next open month."""

    month = models.DateField(unique=True)
    closed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    closed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-month"]

    def __str__(self) -> str:
        return f"{self.month:%Y-%m} closed"


class BudgetAlert(models.Model):
    """A budget threshold crossed and mailed, once per tenant, month and threshold."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="budget_alerts")
    month = models.DateField()
    threshold = models.PositiveSmallIntegerField()
    sent_at = models.DateTimeField(default=timezone.now)
    recipients = models.TextField(blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "month", "threshold"], name="one_alert_per_threshold")
        ]

    def __str__(self) -> str:
        return f"{self.tenant} {self.month:%Y-%m} {self.threshold}%"


class InvoiceSection(models.TextChoices):
    USAGE = "usage", "Usage"
    CORRECTION = "correction", "Corrections of earlier months"
    CREDIT = "credit", "Credits"


class Invoice(models.Model):
    """What one billing account (a top-level tenant, with its departments' and teams' usage) owes
    for a closed month. Issued once, at the close, with a number from one sequence; never changed:
    its lines and totals are copied out of the ledger, so later renames change nothing on it."""

    number = models.PositiveIntegerField(unique=True)
    billing_account = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="invoices")
    account_slug = models.CharField(max_length=63)
    account_name = models.CharField(max_length=200)
    month = models.DateField()
    issued_at = models.DateTimeField(default=timezone.now)
    issue_date = models.DateField()
    totals = models.JSONField(help_text="Amount due per currency, as strings: never added across currencies.")
    energy_kwh = models.DecimalField(max_digits=16, decimal_places=4, default=ZERO)
    co2e_kg = models.DecimalField(max_digits=16, decimal_places=4, default=ZERO)
    ledger_lines = models.BigIntegerField(default=0)

    objects = InvoiceQuerySet.as_manager()

    class Meta:
        ordering = ["-month", "number"]
        constraints = [
            # No line is billed twice: a line belongs to one account and one month, and each
            # account gets one invoice per month.
            models.UniqueConstraint(
                fields=["billing_account", "month"], name="one_invoice_per_account_month"
            ),
        ]

    def __str__(self) -> str:
        return self.display_number

    def save(self, *args, **kwargs) -> None:
        if not self._state.adding:
            raise ValidationError("An issued invoice never changes.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise ValidationError("An issued invoice is never deleted.")

    @property
    def display_number(self) -> str:
        return f"INV-{self.number:06d}"


class InvoiceLine(models.Model):
    """One line of an invoice: a section, GPU type and cluster, in one currency."""

    invoice = models.ForeignKey(Invoice, on_delete=models.PROTECT, related_name="lines")
    section = models.CharField(max_length=16, choices=InvoiceSection.choices)
    gpu_type = models.CharField(max_length=63, blank=True)
    cluster = models.CharField(max_length=63, blank=True)
    currency = models.CharField(max_length=3, blank=True)
    gpu_seconds = models.BigIntegerField(default=0)
    amount = models.DecimalField(max_digits=16, decimal_places=2, default=ZERO)
    energy_kwh = models.DecimalField(max_digits=16, decimal_places=4, default=ZERO)
    co2e_kg = models.DecimalField(max_digits=16, decimal_places=4, default=ZERO)
    ledger_lines = models.BigIntegerField(default=0)

    SECTION_ORDER = {InvoiceSection.USAGE: 0, InvoiceSection.CORRECTION: 1, InvoiceSection.CREDIT: 2}

    class Meta:
        ordering = ["invoice", "id"]

    def __str__(self) -> str:
        return f"{self.invoice} {self.section} {self.gpu_type}@{self.cluster}: {self.amount} {self.currency}"

    def save(self, *args, **kwargs) -> None:
        if not self._state.adding:
            raise ValidationError("An issued invoice never changes.")
        super().save(*args, **kwargs)

    @property
    def gpu_hours(self) -> Decimal:
        return (Decimal(self.gpu_seconds) / 3600).quantize(Decimal("0.0001"))
