from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal
from unittest import mock

import pytest
from django.core import mail
from django.test import TestCase

from billing.alerts import check_budget_alerts
from billing.models import BudgetAlert, RateCard
from jobs import notifications
from quotas.models import Budget

from .conftest import at, run_now

pytestmark = pytest.mark.django_db


def test_dashboard_shows_spend_this_month_and_gpu_hours_per_day(client, owner, tenant, prices, ran, quotas):
    Budget.objects.create(tenant=tenant, amount_per_month=Decimal("100"), currency="EUR")
    run_now(ran, 2, gpu_count=2)  # 4 GPU-h × 2.50
    client.force_login(owner)
    page = client.get("/tenants/demo-lab/").content.decode()
    assert '<strong id="spend-amount">10.00 EUR</strong>' in page
    assert "of a 100.00 EUR budget (10.0%)" in page
    assert "GPU-h h100</title>" in page  # a bar of the daily chart


def test_spend_is_in_the_accounts_one_currency_whatever_other_prices_exist(
    client, owner, tenant, tenant_admin, a100, a100_in_dollars, ran
):
    tenant_admin.email = "lab-admin@example.org"
    tenant_admin.save()
    Budget.objects.create(tenant=tenant, amount_per_month=Decimal("100"), currency="EUR")
    run_now(ran, 2, gpu_count=2)  # 4 GPU-h × 2.50 = 10.00 EUR
    run_now(ran, 2, gpu_count=4, gpu_type=a100)  # 8 GPU-h × 1.00 EUR: the USD price is another account's
    assert check_budget_alerts() == 0
    client.force_login(owner)
    page = client.get("/tenants/demo-lab/").content.decode()
    assert '<strong id="spend-amount">18.00 EUR</strong>' in page
    assert "of a 100.00 EUR budget (18.0%)" in page and "USD" not in page


def test_job_page_shows_live_cost_while_running_and_the_bill_after(
    client, owner, prices, running, frozen_now
):
    job = running(frozen_now - timedelta(hours=1), gpu_count=2)
    client.force_login(owner)
    page = client.get(f"/jobs/{job.pk}/").content.decode()
    assert 'id="job-cost">5.00 EUR so far' in page
    # 2 × 700 W × 1 h × PUE 1.2; 400 g/kWh
    assert 'id="job-energy">1.680 kWh estimated (board power × time), 0.672 kg CO2e' in page
    dashboard = client.get("/tenants/demo-lab/").content.decode()
    assert '<span id="spend-accruing">5.00 EUR</span> accruing on 1 running job' in dashboard


def test_dashboard_shows_what_running_jobs_accrue_in_the_accounts_currency(
    client, owner, tenant, a100, a100_in_dollars, running, frozen_now
):
    Budget.objects.create(tenant=tenant, amount_per_month=Decimal("100"), currency="EUR")
    for spec in ({"gpu_count": 2}, {"gpu_type": a100, "gpu_count": 1}):  # 5.00 EUR, 1.00 EUR an hour
        running(frozen_now - timedelta(hours=1), **spec)
    client.force_login(owner)
    dashboard = client.get("/tenants/demo-lab/").content.decode()
    assert '<span id="spend-accruing">6.00 EUR</span> accruing on 2 running jobs' in dashboard


def test_a_price_in_another_currency_never_bills_the_account(client, owner, prices, ran, cluster, h100):
    RateCard.objects.create(
        gpu_type=h100,
        cluster=cluster,
        currency="USD",
        price_per_gpu_hour=Decimal("3.00"),
        effective_from=date(2026, 11, 1),
    )
    job = ran(at(2026, 10, 31, 22), at(2026, 11, 1, 2))  # 4 h at 2.50 EUR: demo-lab is billed in EUR
    client.force_login(owner)
    page = client.get(f"/jobs/{job.pk}/").content.decode()
    assert 'id="job-cost">10.00 EUR (being billed)' in page


def test_budget_alerts_go_to_tenant_admins_once_per_threshold(tenant, tenant_admin, owner, prices, ran):
    tenant_admin.email = "lab-admin@example.org"
    tenant_admin.save()
    owner.email = "researcher@example.org"
    owner.save()
    Budget.objects.create(tenant=tenant, amount_per_month=Decimal("20"), currency="EUR")
    run_now(ran, 7, gpu_count=1)  # 17.50 EUR: past 80%
    assert alerts_mailed(lambda: check_budget_alerts() + check_budget_alerts()) == 1
    assert len(mail.outbox) == 1 and mail.outbox[0].to == ["lab-admin@example.org"]
    assert "80%" in mail.outbox[0].subject and "17.50 of 20" in mail.outbox[0].body
    run_now(ran, 2, gpu_count=1)  # 22.50 EUR: past 100%
    assert alerts_mailed(check_budget_alerts) == 1
    assert [a.threshold for a in BudgetAlert.objects.order_by("threshold")] == [80, 100]
    assert "100%" in mail.outbox[1].subject and len(mail.outbox) == 2


def alerts_mailed(check) -> int:
    """Run `check`; its notifications' deliveries, which go to the notifications queue once it
    commits, are sent here as a worker would. Returns what `check` returned."""
    sent: list[int] = []
    with (
        mock.patch.object(notifications, "_enqueue", side_effect=lambda ids, countdown=0: sent.extend(ids)),
        TestCase.captureOnCommitCallbacks(execute=True),
    ):
        found = check()
    for delivery_id in sent:
        notifications.deliver(delivery_id)
    return found
