"""What billing adds to other apps' pages: a job's cost, a tenant's spend this month."""

from __future__ import annotations

from collections import defaultdict
from datetime import date, timedelta
from decimal import Decimal

from django.db import models
from django.db.models.functions import TruncDate
from django.template.loader import render_to_string

from factory.months import days_in, month_of
from jobs.choices import JobState
from jobs.models import Job
from quotas.models import Budget

from .budgeting import money_spent
from .metering import Pricing, live_cost
from .models import ZERO, MonthlySummary, UsageKind, UsageRecord

CHART_COLORS = ["#2457c5", "#e08a00", "#1a7f37", "#8e44ad", "#c62828"]


def job_cost(request, job) -> str:
    if job.started_at is None:
        return ""
    cost = live_cost(job)
    billed = job.usage_records.exists() if job.is_terminal else False
    context = {"cost": cost, "final": billed, "running": not job.is_terminal}
    return render_to_string("billing/_job_cost.html", context, request=request)


def tenant_spend(request, tenant) -> str:
    month = month_of()
    budget = Budget.objects.filter(tenant=tenant).first()
    pricing = Pricing()
    jobs = list(Job.objects.filter(tenant=tenant, state=JobState.RUNNING))
    pricing.load_measured((job.pk, job.attempt) for job in jobs)  # one batch, not a look-up per job
    running = [live_cost(job, pricing=pricing) for job in jobs]
    accruing: dict[str, Decimal] = {}  # one amount per currency, never added across them
    for cost in running:
        for code, amount in cost.amounts.items():
            accruing[code] = accruing.get(code, ZERO) + amount
    accruing = dict(sorted(accruing.items()))
    currency = getattr(budget, "currency", "") or billed_currency(tenant, month) or next(iter(accruing), "")
    amount = money_spent({tenant.pk: currency}, month).get(tenant.pk, ZERO)
    energy = UsageRecord.objects.filter(tenant=tenant, month=month).aggregate(
        kwh=models.Sum("energy_kwh"), co2e=models.Sum("co2e_kg")
    )
    context = {
        "month": month,
        "amount": amount.quantize(Decimal("0.01")),
        "accruing": accruing,
        "running_jobs": len(running),
        "energy_kwh": energy["kwh"] or ZERO,
        "co2e_kg": energy["co2e"] or ZERO,
        "currency": currency,
        "budget": budget,
        "percent": round(float(100 * amount / budget.amount_per_month), 1)
        if budget and budget.amount_per_month
        else None,
        "chart": daily_gpu_hours_chart(tenant, month),
        **finance_news(request.user, tenant),
    }
    return render_to_string("billing/_spend.html", context, request=request)


def finance_news(user, tenant) -> dict:
    """For the tenant's admins (and finance): the credits and corrections finance made to the
    tenant's bill, and the account's latest invoices."""
    from .models import Invoice
    from .permissions import sees_bill_of

    if not sees_bill_of(user, tenant):
        return {}
    changes = (
        UsageRecord.objects.filter(tenant=tenant, kind__in=[UsageKind.CREDIT, UsageKind.CORRECTION])
        .select_related("created_by")
        .order_by("-id")[:10]
    )
    return {"ledger_changes": changes, "invoices": Invoice.objects.filter(billing_account=tenant)[:3]}


def billed_currency(tenant, month: date) -> str:
    """For a tenant whose budget names no currency: the one most of the month was billed in."""
    rows = (
        MonthlySummary.objects.filter(tenant=tenant, month=month)
        .exclude(currency="")
        .values("currency")
        .annotate(total=models.Sum("amount"))
        .order_by("-total")
    )
    return next((row["currency"] for row in rows), "")


def daily_gpu_hours_chart(tenant, month: date, width: int = 600, height: int = 160) -> dict:
    """Stacked bars of GPU-hours per day by GPU type (server-rendered SVG)."""
    rows = (
        UsageRecord.objects.filter(tenant=tenant, month=month, gpu_type__isnull=False)
        .exclude(kind=UsageKind.CREDIT)  # GPU-hours used, not given back
        .annotate(day=TruncDate("period_end"))
        .values("day", "gpu_type__slug")
        .annotate(seconds=models.Sum("gpu_seconds"))
    )
    per_day: dict[date, dict[str, float]] = defaultdict(dict)
    for row in rows:
        per_day[row["day"]][row["gpu_type__slug"]] = row["seconds"] / 3600
    gpu_types = sorted({t for day in per_day.values() for t in day})
    days = days_in(month)
    top = max([sum(day.values()) for day in per_day.values()] + [1.0])
    bar = width / days
    bars = []
    for index in range(days):
        day = month + timedelta(days=index)
        y = float(height)
        for color, gpu_type in zip(CHART_COLORS, gpu_types, strict=False):
            value = per_day.get(day, {}).get(gpu_type, 0.0)
            if value:
                h = value / top * height
                y -= h
                bars.append(
                    {
                        "x": round(index * bar + 1, 1),
                        "y": round(y, 1),
                        "w": round(bar - 2, 1),
                        "h": round(h, 1),
                        "color": color,
                        "title": f"{day:%d %b}: {value:.1f} GPU-h {gpu_type}",
                    }
                )
    legend = [{"name": t, "color": c} for c, t in zip(CHART_COLORS, gpu_types, strict=False)]
    return {"width": width, "height": height, "bars": bars, "legend": legend, "top": round(top, 1)}
