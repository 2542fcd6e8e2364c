from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def meter_released(
    sender, job_id, attempt, cluster_id, started_at, ended_at, requeued, platform_fault=False, **kwargs
) -> None:
    """A job attempt stopped holding GPUs (after commit): put it in the ledger. A failure here is
    caught up by the periodic metering, never lost, never billed twice."""
    from . import alerts, metering

    try:
        lines = metering.meter_release(
            job_id, attempt, cluster_id, started_at, ended_at, requeued, platform_fault=platform_fault
        )
        if lines:
            alerts.check_budget_alerts([lines[0].tenant_id])
    except Exception:
        log.exception("metering job %s failed; the periodic metering will retry", job_id)


def ledger_lines_in_the_way(sender, ids, **kwargs) -> dict[int, list[str]]:
    """The ledger is immutable: nothing its lines name is ever deleted."""
    from factory.models import Cluster, GpuType, Tenant
    from factory.signals import counted

    from .models import RateCard, UsageRecord

    column = {Tenant: "tenant_id", GpuType: "gpu_type_id", Cluster: "cluster_id", RateCard: "rate_card_id"}[
        sender
    ]
    return counted(UsageRecord.objects, column, ids, "ledger lines")


def seed_demo(sender, tenant, **kwargs) -> None:
    """Demo prices, grid intensity and a money budget."""
    from datetime import date
    from decimal import Decimal

    from factory.models import GpuType
    from quotas.models import Budget

    from .models import GridIntensity, RateCard

    prices = {"h100": Decimal("2.50"), "a100": Decimal("1.40")}
    for gpu_type in GpuType.objects.filter(slug__in=prices):
        if not RateCard.objects.filter(gpu_type=gpu_type, cluster__isnull=True).exists():
            RateCard.objects.create(
                gpu_type=gpu_type,
                currency="EUR",
                price_per_gpu_hour=prices[gpu_type.slug],
                price_per_cpu_core_hour=Decimal("0.01"),
                effective_from=date(2026, 1, 1),
            )
    GridIntensity.objects.get_or_create(region="local", defaults={"grams_co2e_per_kwh": Decimal("250")})
    Budget.objects.filter(tenant=tenant, amount_per_month__isnull=True).update(
        amount_per_month=Decimal("5000"), currency="EUR"
    )


def billing_account_moving(sender, tenant, parent, **kwargs) -> list[str]:
    """A billing account is the top of its tenant tree: it cannot be placed below another."""
    from .models import BillingAccount

    if parent is None or not BillingAccount.objects.filter(tenant=tenant).exists():
        return []
    return [
        f"{tenant} is a billing account (the top of its tenant tree, billed on its own): remove "
        "its billing account before placing it below another tenant."
    ]
