from __future__ import annotations

import threading
import time

import pytest
from django.db import connection

from factory.models import Cluster, Pool
from jobs.choices import HOLDING_STATES, JobState
from jobs.models import Job
from quotas import admission
from quotas.admission import admit_pending

pytestmark = pytest.mark.django_db


def held(gpu_type) -> int:
    return sum(
        Job.objects.filter(state__in=HOLDING_STATES, gpu_type=gpu_type).values_list("gpu_count", flat=True)
    )


def test_admission_fills_the_pool_and_explains_the_wait(make_job, h100, django_capture_on_commit_callbacks):
    jobs = [make_job(name=f"j{i}", gpu_count=2) for i in range(3)]
    with django_capture_on_commit_callbacks():
        assert admit_pending() == 2
    for job in jobs:
        job.refresh_from_db()
    assert [j.state for j in jobs] == [JobState.ADMITTED, JobState.ADMITTED, JobState.PENDING]
    assert jobs[2].reason == "waiting for 2 free h100 GPU(s): 4 of 4 in use on local"
    assert jobs[0].cluster.slug == "local"


def test_higher_priority_goes_first_then_submit_order(make_job, django_capture_on_commit_callbacks):
    first = make_job(name="first", gpu_count=4)
    urgent = make_job(name="urgent", gpu_count=4, priority=10)
    with django_capture_on_commit_callbacks():
        admit_pending()
    urgent.refresh_from_db()
    first.refresh_from_db()
    assert (urgent.state, first.state) == (JobState.ADMITTED, JobState.PENDING)


def test_a_big_job_waiting_does_not_block_a_small_one_that_fits(make_job, django_capture_on_commit_callbacks):
    make_job(name="holder", gpu_count=3)
    with django_capture_on_commit_callbacks():
        admit_pending()
    big = make_job(name="big", gpu_count=4)
    small = make_job(name="small", gpu_count=1)
    with django_capture_on_commit_callbacks():
        admit_pending()
    big.refresh_from_db()
    small.refresh_from_db()
    assert (big.state, small.state) == (JobState.PENDING, JobState.ADMITTED)


def test_draining_and_disabled_clusters_get_no_new_jobs(
    make_job, cluster, django_capture_on_commit_callbacks
):
    Cluster.objects.filter(pk=cluster.pk).update(draining=True)
    job = make_job()
    with django_capture_on_commit_callbacks():
        assert admit_pending() == 0
    job.refresh_from_db()
    assert job.reason == "no cluster accepting jobs has h100 GPUs"


def test_residency_keeps_jobs_in_allowed_regions(
    make_job, tenant, cluster, h100, django_capture_on_commit_callbacks
):
    eu = Cluster.objects.create(slug="eu-1", name="EU", kind="local", region="eu")
    Pool.objects.create(cluster=eu, gpu_type=h100, capacity=2)
    tenant.regions = ["eu"]
    tenant.save()
    jobs = [make_job(name=f"j{i}") for i in range(3)]
    with django_capture_on_commit_callbacks():
        admit_pending()
    placed = [Job.objects.get(pk=j.pk) for j in jobs]
    assert [j.cluster.slug if j.cluster else None for j in placed] == ["eu-1", "eu-1", None]
    assert "2 of 2 in use on eu-1" in placed[2].reason


@pytest.mark.django_db(transaction=True)
def test_concurrent_admissions_never_oversubscribe_a_pool(make_job, h100, cluster, monkeypatch):
    """Four threads, each with its own PostgreSQL connection, admit the same queue at once."""
    assert connection.vendor == "postgresql"
    real_in_use = admission._gpus_in_use

    def slow_in_use(pools):
        # Widen the window between reading usage and admitting, where a race would strike.
        usage = real_in_use(pools)
        time.sleep(0.02)
        return usage

    monkeypatch.setattr(admission, "_gpus_in_use", slow_in_use)
    jobs = [make_job(name=f"j{i}", gpu_count=1 + i % 2) for i in range(8)]
    barrier = threading.Barrier(len(jobs))
    errors: list[BaseException] = []

    def worker(job):
        from django.db import connections

        try:
            barrier.wait()
            admission.admit(Job.objects.select_related("gpu_type", "tenant").get(pk=job.pk))
            admit_pending()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker, args=(job,)) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert held(h100) == 4  # the pool's capacity, exactly: full, and not one GPU more
    for job in Job.objects.filter(state=JobState.ADMITTED):
        assert job.events.filter(state=JobState.ADMITTED).count() == 1
