"""Budget alerts: a tenant's admins are mailed when this month's spend passes 80% and 100% of its
budget (money when set, else GPU-hours), once per threshold per month."""

from __future__ import annotations

import logging
from decimal import Decimal

from django.conf import settings
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.utils import timezone

from factory.choices import Role
from factory.models import Tenant
from factory.months import month_of
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
        used = (
            Reservation.objects.filter(tenant_id=budget.tenant_id)
            .gpu_hours_by_tenant(month)
            .get(budget.tenant_id, ZERO)
        )
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
    """Record the threshold as crossed (once per month) and have its mail sent, on the
    notifications queue once this commits: a slow mail server holds up no metering."""
    from .tasks import send_budget_alert

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
    except IntegrityError:
        return 0  # already sent this month
    if admins:
        transaction.on_commit(lambda: send_budget_alert.delay(alert.pk, words), robust=True)
    log.info("budget alert %s%% for %s to %d admin(s)", threshold, tenant, len(admins))
    return 1


def mail_alert(alert_id: int, words: str) -> bool:
    """Mail an alert to the admins it names, at most once (claimed before it is sent; given back
    if sending fails, for the retry). Returns whether this call sent it."""
    if not BudgetAlert.objects.filter(pk=alert_id, mailed_at__isnull=True).update(mailed_at=timezone.now()):
        return False
    alert = BudgetAlert.objects.select_related("tenant").get(pk=alert_id)
    tenant = alert.tenant
    try:
        send_mail(
            subject=f"[{settings.SITE_NAME}] {tenant.name}: {alert.threshold}% of this month's budget used",
            message=(
                f"{tenant.name} ({tenant.slug}) has used {words} this month ({alert.month:%B %Y}), "
                f"passing {alert.threshold}% of its budget.\n"
            ),
            from_email=settings.DEFAULT_FROM_EMAIL,
            recipient_list=[address.strip() for address in alert.recipients.split(",") if address.strip()],
        )
    except Exception:
        BudgetAlert.objects.filter(pk=alert_id).update(mailed_at=None)
        raise
    return True
