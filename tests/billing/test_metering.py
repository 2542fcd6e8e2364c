from __future__ import annotations

import threading
from datetime import date, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.utils import timezone

from billing import invoicing, metering
from billing.models import MonthClose, MonthlySummary, RateCard, UsageKind, UsageRecord, to_cents
from jobs.choices import JobState

from .conftest import at

pytestmark = pytest.mark.django_db


def meter(job):
    return metering.meter_release(job.pk, job.attempt, job.cluster_id, job.started_at, job.ended_at, False)


def test_rounding_is_half_even_to_the_cent():
    assert to_cents(Decimal("0.125")) == Decimal("0.12")
    assert to_cents(Decimal("0.135")) == Decimal("0.14")
    assert to_cents(Decimal("-0.125")) == Decimal("-0.12")


def test_a_job_is_metered_from_its_real_times(prices, ran, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):  # the release signal meters it
        job = ran(at(2026, 11, 3, 10), at(2026, 11, 3, 11, 30), gpu_count=2, cpus=4, time_limit_minutes=600)
    line = UsageRecord.objects.get(job=job)
    assert (line.kind, line.month, line.gpus, line.gpu_seconds) == (
        UsageKind.USAGE,
        date(2026, 11, 1),
        2,
        2 * 5400,
    )
    assert line.amount == Decimal("7.50")  # 3 GPU-h × 2.50, not the 20 GPU-h the time limit allowed
    assert line.rate_card == prices[0] and line.currency == "EUR"
    # 2 GPUs × 700 W × 1.5 h × PUE 1.20 = 2.52 kWh; × 400 g/kWh = 1.008 kg
    assert line.energy_kwh == Decimal("2.5200") and line.co2e_kg == Decimal("1.0080")
    assert line.cost_center == job.tenant.cost_center


def test_a_run_across_a_month_boundary_is_split_at_midnight_utc(prices, ran):
    job = ran(at(2026, 10, 31, 22), at(2026, 11, 1, 3))
    meter(job)
    lines = list(UsageRecord.objects.filter(job=job).order_by("period_start"))
    assert [(line.month, line.gpu_seconds) for line in lines] == [
        (date(2026, 10, 1), 7200),
        (date(2026, 11, 1), 10800),
    ]
    assert lines[0].period_end == at(2026, 11, 1) == lines[1].period_start
    assert sum(line.amount for line in lines) == Decimal("12.50")


def test_metering_twice_bills_once(prices, ran):
    job = ran(at(2026, 11, 3, 10), at(2026, 11, 3, 11))
    assert len(meter(job)) == 1
    assert meter(job) == []
    assert metering.meter_finished() == 0
    assert UsageRecord.objects.count() == 1
    summary = MonthlySummary.objects.get()
    assert (summary.amount, summary.lines, summary.jobs) == (Decimal("2.50"), 1, 1)


def test_the_safety_net_meters_a_job_the_signal_missed(prices, ran):
    job = ran(at(2026, 11, 3, 10), at(2026, 11, 3, 12))
    assert not UsageRecord.objects.exists()  # the signal was not delivered (no commit here)
    assert metering.meter_finished() == 1
    assert UsageRecord.objects.get(job=job).amount == Decimal("5.00")


def test_the_safety_net_meters_the_rest_of_an_accrued_job_whose_release_was_missed(prices, running):
    job = running(at(2026, 10, 30, 0))
    metering.meter_running(now=at(2026, 11, 1, 0, 1))  # October accrued
    job.finish(JobState.SUCCEEDED, exit_code=0, ended_at=at(2026, 11, 1, 12))  # signal not delivered
    assert metering.meter_finished() == 1
    assert metering.meter_finished() == 0
    lines = UsageRecord.objects.filter(job=job).order_by("period_start")
    assert [(line.month, line.gpu_seconds) for line in lines] == [
        (date(2026, 10, 1), 2 * 86400),
        (date(2026, 11, 1), 43200),
    ]


def test_the_safety_net_credits_an_accrued_charge_of_a_platform_failure_whose_release_was_missed(
    prices, running
):
    job = running(at(2026, 10, 31, 0))
    metering.meter_running(now=at(2026, 11, 1, 0, 1))
    job.finish(JobState.FAILED, ended_at=at(2026, 11, 1, 6), platform_fault=True)
    metering.meter_finished()
    assert metering.meter_finished() == 0
    assert sum(line.amount for line in UsageRecord.objects.filter(job=job)) == 0


def test_cluster_price_beats_the_gpu_type_price_and_price_changes_keep_the_past(prices, ran, cluster, h100):
    RateCard.objects.create(
        gpu_type=h100,
        cluster=cluster,
        currency="EUR",
        price_per_gpu_hour=Decimal("3.00"),
        effective_from=date(2026, 11, 10),
    )
    before = ran(at(2026, 11, 3, 10), at(2026, 11, 3, 11))
    after = ran(at(2026, 11, 12, 10), at(2026, 11, 12, 11))
    meter(before)
    meter(after)
    assert UsageRecord.objects.get(job=before).amount == Decimal("2.50")
    assert UsageRecord.objects.get(job=after).amount == Decimal("3.00")


def test_preempted_and_platform_failed_time_is_recorded_not_charged(prices, ran, make_job, cluster):
    failed = ran(at(2026, 11, 3, 10), at(2026, 11, 3, 12), state=JobState.FAILED, platform_fault=True)
    meter(failed)
    line = UsageRecord.objects.get(job=failed)
    assert (line.kind, line.amount, line.gpu_seconds) == (UsageKind.PLATFORM_FAULT, Decimal("0"), 7200)
    preempted = make_job()
    metering.meter_release(preempted.pk, 0, cluster.pk, at(2026, 11, 4, 10), at(2026, 11, 4, 11), True)
    assert UsageRecord.objects.get(job=preempted).kind == UsageKind.PREEMPTED
    summary = MonthlySummary.objects.get()
    assert summary.amount == 0 and summary.charged_gpu_seconds == 0 and summary.gpu_seconds == 3 * 3600


def test_a_closed_month_never_changes_late_usage_lands_in_the_next_open_month(prices, ran, finance_user):
    invoicing.close_month(date(2026, 10, 1), finance_user)
    job = ran(at(2026, 10, 31, 22), at(2026, 11, 1, 2))
    meter(job)
    october = UsageRecord.objects.get(job=job, period_start=at(2026, 10, 31, 22))
    assert october.month == date(2026, 11, 1) and october.kind == UsageKind.ADJUSTMENT
    assert "2026-10, a closed month" in october.note
    assert not UsageRecord.objects.filter(month=date(2026, 10, 1)).exists()
    assert MonthClose.objects.get().closed_by == finance_user


def test_a_month_closed_while_its_usage_was_being_priced_still_never_changes(prices, ran, finance_user):
    job = ran(at(2026, 10, 31, 22), at(2026, 11, 1, 2))  # the release signal was not delivered
    lines = metering.lines_for_release(
        job, 0, job.started_at, job.ended_at, UsageKind.USAGE, metering.Pricing()
    )
    invoicing.close_month(date(2026, 10, 1), finance_user)  # between pricing and recording
    metering.record(lines)
    assert not UsageRecord.objects.filter(month=date(2026, 10, 1)).exists()
    assert not MonthlySummary.objects.filter(month=date(2026, 10, 1)).exists()
    late = UsageRecord.objects.get(job=job, period_start=at(2026, 10, 31, 22))
    assert (late.kind, late.month) == (UsageKind.ADJUSTMENT, date(2026, 11, 1))


def test_running_jobs_accrue_finished_months_and_end_without_double_billing(prices, running):
    job = running(at(2026, 10, 30, 0))
    assert metering.meter_running(now=at(2026, 11, 2)) == 1
    assert metering.meter_running(now=at(2026, 11, 3)) == 0
    job.finish(JobState.SUCCEEDED, exit_code=0, ended_at=at(2026, 11, 1, 12))
    meter(job)
    lines = UsageRecord.objects.filter(job=job).order_by("period_start")
    assert [(line.month, line.gpu_seconds) for line in lines] == [
        (date(2026, 10, 1), 2 * 86400),
        (date(2026, 11, 1), 43200),
    ]


def test_closing_a_month_never_bills_its_accrued_usage_again(prices, running, finance_user):
    job = running(at(2026, 10, 30, 0))
    assert metering.meter_running(now=at(2026, 11, 1, 0, 1)) == 1  # October accrued while open
    invoicing.close_month(date(2026, 10, 1), finance_user)
    assert metering.meter_running(now=at(2026, 11, 1, 9)) == 0  # the sweeps after the close
    job.finish(JobState.SUCCEEDED, exit_code=0, ended_at=at(2026, 11, 1, 12))
    meter(job)
    assert metering.meter_finished() == 0
    lines = UsageRecord.objects.filter(job=job).order_by("period_start")
    assert [(line.kind, line.month, line.gpu_seconds) for line in lines] == [
        (UsageKind.USAGE, date(2026, 10, 1), 2 * 86400),
        (UsageKind.USAGE, date(2026, 11, 1), 43200),
    ]
    assert sum(summary.amount for summary in MonthlySummary.objects.all()) == Decimal("150.00")


def test_a_platform_failure_credits_a_closed_months_accrued_charge_once(prices, running, finance_user):
    job = running(at(2026, 10, 31, 0))
    metering.meter_running(now=at(2026, 11, 1, 0, 1))  # 24 GPU-h of October: 60.00 EUR
    invoicing.close_month(date(2026, 10, 1), finance_user)
    metering.meter_running(now=at(2026, 11, 1, 9))
    job.finish(JobState.FAILED, ended_at=at(2026, 11, 1, 12), platform_fault=True)
    meter(job)
    metering.meter_finished()
    lines = UsageRecord.objects.filter(job=job)
    assert sum(line.amount for line in lines) == 0
    assert [line.amount for line in lines if line.amount < 0] == [Decimal("-60.00")]
    summaries = MonthlySummary.objects.all()
    assert sum(summary.amount for summary in summaries) == 0
    assert sum(summary.charged_gpu_seconds for summary in summaries) == 0
    assert sum(summary.gpu_seconds for summary in summaries) == 36 * 3600  # recorded once, not charged
    assert sum(summary.energy_kwh for summary in summaries) == Decimal("30.2400")  # 36 h × 700 W × 1.2


def test_usage_accrued_after_its_month_closed_is_credited_when_the_platform_failed_the_job(
    prices, running, finance_user
):
    job = running(at(2026, 10, 31, 0))
    invoicing.close_month(date(2026, 10, 1), finance_user)  # before any sweep saw October end
    metering.meter_running(now=at(2026, 11, 1, 9))  # October's 60.00 EUR, billed late in November
    job.finish(JobState.FAILED, ended_at=at(2026, 11, 1, 12), platform_fault=True)
    meter(job)
    assert sum(line.amount for line in UsageRecord.objects.filter(job=job)) == 0
    assert sum(summary.amount for summary in MonthlySummary.objects.all()) == 0


def test_the_ledger_refuses_a_second_line_for_a_metered_period_whatever_its_kind(prices, ran):
    from django.db import IntegrityError, transaction

    job = ran(at(2026, 11, 3, 10), at(2026, 11, 3, 11))
    line = meter(job)[0]
    for kind in (UsageKind.ADJUSTMENT, UsageKind.PLATFORM_FAULT):
        line.pk, line.kind = None, kind
        with pytest.raises(IntegrityError), transaction.atomic():
            line.save(force_insert=True)


def test_accrued_charges_are_credited_when_the_platform_failed_the_job(prices, running):
    job = running(at(2026, 10, 31, 0))
    metering.meter_running(now=at(2026, 11, 2))
    job.finish(JobState.FAILED, ended_at=at(2026, 11, 1, 6), platform_fault=True)
    meter(job)
    total = sum(line.amount for line in UsageRecord.objects.filter(job=job))
    assert total == 0
    assert UsageRecord.objects.filter(job=job, kind=UsageKind.ADJUSTMENT, amount=Decimal("-60.00")).exists()


def test_unpriced_usage_is_recorded_at_zero(ran, cluster):
    job = ran(at(2026, 11, 3, 10), at(2026, 11, 3, 11))
    meter(job)
    line = UsageRecord.objects.get(job=job)
    assert (line.rate_card, line.amount, line.currency) == (None, Decimal("0"), "")


@pytest.mark.django_db(transaction=True)
def test_concurrent_metering_of_the_same_jobs_bills_each_once(prices, ran):
    """Four workers meter the same ten jobs at the same moment, each on its own PostgreSQL connection."""
    assert connection.vendor == "postgresql"
    jobs = [ran(at(2026, 11, 3, 10), at(2026, 11, 3, 10 + 1 + i % 3)) for i in range(10)]
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def worker():
        from django.db import connections

        try:
            barrier.wait()
            for job in jobs:
                meter(job)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert UsageRecord.objects.count() == 10
    expected = sum((line.amount for line in UsageRecord.objects.all()), Decimal(0))
    summary = MonthlySummary.objects.get()
    assert summary.amount == expected and summary.lines == 10 and summary.jobs == 10


def test_the_minute_pass_looks_only_at_jobs_changed_lately_and_the_full_pass_at_all(
    prices, ran, settings, django_assert_max_num_queries
):
    """The safety net's frequent pass reads the jobs whose state changed within
    FACTORY_METERING_LOOKBACK (an index on them), not the whole history; the periodic full pass
    meters whatever it missed, however old."""
    from billing import tasks
    from jobs.models import Job

    settings.FACTORY_METERING_LOOKBACK = 3600
    old, recent = ran(at(2026, 11, 3, 10), at(2026, 11, 3, 12)), ran(at(2026, 11, 3, 10), at(2026, 11, 3, 11))
    Job.objects.filter(pk=old.pk).update(updated_at=timezone.now() - timedelta(hours=2))
    assert not UsageRecord.objects.exists()  # both releases lost
    assert tasks.meter()["finished"] == 1
    assert list(UsageRecord.objects.values_list("job", flat=True)) == [recent.pk]
    assert tasks.meter()["finished"] == 0
    assert tasks.meter_all_finished() == 1
    assert UsageRecord.objects.get(job=old).amount == Decimal("5.00")
    assert tasks.meter_all_finished() == 0


def test_the_minute_pass_uses_the_index_of_recently_ended_jobs():
    from billing import metering as m

    since = timezone.now() - timedelta(hours=1)
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        sql, params = m.unmetered_jobs(since).query.sql_with_params()
        cursor.execute(f"EXPLAIN {sql}", params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "job_ended_recently" in plan, plan
