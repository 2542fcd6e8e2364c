"""GPU quotas per tenant and GPU type, monthly budgets, and the reservations admission makes
against them. Every change an admin makes to a quota or budget is in the audit trail
(factory.audit)."""

from __future__ import annotations

import re
from decimal import Decimal

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from factory.models import GpuType, Tenant
from jobs.models import Job

from .querysets import BudgetQuerySet, QuotaQuerySet, ReservationQuerySet


class Quota(models.Model):
    """Kueue-style: `nominal` GPUs are guaranteed; up to `borrowing_limit` more may be borrowed
    while others leave GPUs idle; others may borrow up to `lending_limit` of this tenant's idle
    nominal GPUs. Empty limits mean "no limit"."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="quotas")
    gpu_type = models.ForeignKey(GpuType, on_delete=models.CASCADE, related_name="quotas")
    nominal = models.PositiveIntegerField(default=0, help_text="GPUs guaranteed to the tenant.")
    borrowing_limit = models.PositiveIntegerField(
        null=True, blank=True, help_text="GPUs it may borrow above nominal; empty: any idle GPUs."
    )
    lending_limit = models.PositiveIntegerField(
        null=True, blank=True, help_text="Of its idle nominal GPUs, how many others may borrow; empty: all."
    )
    max_gpus_per_job = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)], help_text="Empty: no limit."
    )
    max_gpus_per_user = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)], help_text="Empty: no limit."
    )
    updated_at = models.DateTimeField(auto_now=True)

    objects = QuotaQuerySet.as_manager()

    class Meta:
        ordering = ["tenant__slug", "gpu_type__slug"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "gpu_type"], name="one_quota_per_tenant_gpu_type"),
            models.CheckConstraint(
                condition=models.Q(lending_limit__isnull=True)
                | models.Q(lending_limit__lte=models.F("nominal")),
                name="quota_lending_within_nominal",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.tenant}/{self.gpu_type}: {self.nominal}"

    def clean(self) -> None:
        from .nesting import check_quota

        if self.lending_limit is not None and self.nominal is not None and self.lending_limit > self.nominal:
            raise ValidationError(
                {"lending_limit": f"The lending limit cannot exceed the nominal quota ({self.nominal})."}
            )
        check_quota(self)  # a department's nominal bounds its projects' together

    AUDITED = ("nominal", "borrowing_limit", "lending_limit", "max_gpus_per_job", "max_gpus_per_user")


class Budget(models.Model):
    """A tenant's monthly GPU-hour budget. Hard: jobs wait once it is spent (running jobs are never
    killed). Soft: jobs run on; the overrun is visible. Also the highest priority its jobs may use."""

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, related_name="budget")
    gpu_hours_per_month = models.DecimalField(
        max_digits=12,
        decimal_places=2,
        null=True,
        blank=True,
        validators=[MinValueValidator(Decimal(0))],
        help_text="Empty: no GPU-hour budget.",
    )
    amount_per_month = models.DecimalField(
        max_digits=14,
        decimal_places=2,
        null=True,
        blank=True,
        validators=[MinValueValidator(Decimal(0))],
        help_text="Money budget (billed amount) per month; empty: none. Alerts at 80% and 100%.",
    )
    currency = models.CharField(max_length=3, blank=True, help_text="Currency of the money budget, e.g. EUR.")
    hard = models.BooleanField(default=True, help_text="Hold jobs once the budget is spent.")
    max_priority = models.IntegerField(
        default=0,
        validators=[MinValueValidator(-100), MaxValueValidator(100)],
        help_text="Jobs asking for more priority are admitted at this priority.",
    )
    updated_at = models.DateTimeField(auto_now=True)

    AUDITED = ("gpu_hours_per_month", "amount_per_month", "currency", "hard", "max_priority")

    objects = BudgetQuerySet.as_manager()

    def __str__(self) -> str:
        return f"{self.tenant}: {self.gpu_hours_per_month} GPU-h/month"

    def clean(self) -> None:
        if self.amount_per_month is not None and not re.fullmatch(r"[A-Z]{3}", self.currency or ""):
            raise ValidationError(
                {"currency": "A money budget needs a three-letter currency code, e.g. EUR."}
            )


class Reservation(models.Model):
    """What admission set aside for one admitted attempt of a job: GPUs × requested time against the
    month's budget. Settled once when the job stops holding GPUs: the real GPU-hours replace the
    reservation and the rest is refunded; preempted time is recorded and not counted."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="reservations")
    attempt = models.PositiveIntegerField()
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="reservations")
    gpu_type = models.ForeignKey(GpuType, on_delete=models.PROTECT, related_name="+")
    gpus = models.PositiveIntegerField()
    borrowed = models.PositiveIntegerField(
        default=0, help_text="GPUs of this job above the tenant's nominal."
    )
    month = models.DateField()
    reserved_gpu_hours = models.DecimalField(max_digits=12, decimal_places=4)
    used_gpu_hours = models.DecimalField(max_digits=12, decimal_places=4, null=True, blank=True)
    preempted_gpu_hours = models.DecimalField(max_digits=12, decimal_places=4, default=Decimal(0))
    created_at = models.DateTimeField(auto_now_add=True)
    settled_at = models.DateTimeField(null=True, blank=True)

    objects = ReservationQuerySet.as_manager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["job", "attempt"], name="one_reservation_per_attempt")]
        indexes = [models.Index(fields=["tenant", "month"], name="reservation_tenant_month")]

    def __str__(self) -> str:
        return f"{self.job_id}#{self.attempt}: {self.reserved_gpu_hours} GPU-h"
