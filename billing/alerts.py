"""Budget alerts: a tenant's admins are mailed when this month's spend passes 80% and 100% of its
budget (money when set, else GPU-hours; a department's spend includes its projects'), once per
threshold per month."""

from __future__ import annotations

import logging
from decimal import Decimal

from django.db import IntegrityError, transaction

from factory.choices import Role
from factory.hierarchy import TenantTree
from factory.models import Tenant
from factory.months import month_of
from jobs import notifications
from quotas.models import Budget, Reservation

from .budgeting import money_spent
from .models import ZERO, BudgetAlert

log = logging.getLogger(__name__)

THRESHOLDS = (80, 100)


def usage_share(budget: Budget, month) -> tuple[Decimal, str] | None:
    """How much of the budget is used (a fraction), and in words."""
    if budget.amount_per_month:
        spent = money_spent({budget.tenant_id: budget.currency}, month).get(budget.tenant_id, ZERO)
        return spent / budget.amount_per_month, f"{spent} of {budget.amount_per_month} {budget.currency}"
    if budget.gpu_hours_per_month:
        below = TenantTree.load().subtree(budget.tenant_id)  # the budget caps them all
        used = sum(Reservation.objects.filter(tenant_id__in=below).gpu_hours_by_tenant(month).values(), ZERO)
        return used / budget.gpu_hours_per_month, f"{used:.1f} of {budget.gpu_hours_per_month} GPU-hours"
    return None


def check_budget_alerts(tenant_ids: list[int] | None = None) -> int:
    month = month_of()
    budgets = Budget.objects.select_related("tenant")
    if tenant_ids is not None:
        budgets = budgets.filter(tenant_id__in=tenant_ids)
    sent = 0
    for budget in budgets:
        share = usage_share(budget, month)
        if share is None:
            continue
        fraction, words = share
        for threshold in THRESHOLDS:
            if fraction * 100 >= threshold:
                sent += alert_once(budget.tenant, month, threshold, words)
    return sent


def alert_once(tenant: Tenant, month, threshold: int, words: str) -> int:
    """Record the threshold as crossed, once per month, and notify the tenant's admins: their
    deliveries go out on the notifications queue once this commits, so a slow mail server or
    webhook holds up no metering."""
    admins = list(
        tenant.memberships.filter(role=Role.ADMIN, user__is_active=True)
        .exclude(user__email="")
        .values_list("user__email", flat=True)
    )
    try:
        with transaction.atomic():
            alert = BudgetAlert.objects.create(
                tenant=tenant, month=month, threshold=threshold, recipients=", ".join(admins)
            )
            notifications.notify_budget_threshold(alert, words)
    except IntegrityError:
        return 0  # already sent this month
    log.info("budget alert %s%% for %s", threshold, tenant)
    return 1
