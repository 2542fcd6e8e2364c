"""Queues per purpose: where each task goes, its time limits, and the workers started for them."""

from __future__ import annotations

import re

import pytest
from django.conf import settings

from factory.celery import app
from factory.models import Cluster
from tests.integration.conftest import PROJECT_DIR

PROJECT_APPS = ("factory.", "jobs.", "quotas.", "billing.", "fleet.")


def project_tasks() -> dict:
    app.autodiscover_tasks(force=True)
    return {name: task for name, task in app.tasks.items() if name.startswith(PROJECT_APPS)}


def queue_of(name: str, args=(), kwargs=None) -> str:
    options = app.amqp.router.route({}, name, args, kwargs or {}, project_tasks()[name])
    return options["queue"].name


def test_every_task_has_a_soft_and_a_hard_time_limit():
    tasks = project_tasks()
    assert len(tasks) >= 10
    for name, task in tasks.items():
        soft = task.soft_time_limit or app.conf.task_soft_time_limit
        hard = task.time_limit or app.conf.task_time_limit
        assert soft and hard and soft < hard, name


def test_no_task_that_calls_a_backend_outlives_a_dispatchers_lease():
    for name, task in project_tasks().items():
        assert (task.time_limit or app.conf.task_time_limit) < settings.FACTORY_DISPATCH_LEASE, name


def test_every_periodic_entry_expires_and_nothing_else_is_scheduled():
    from celery.beat import Scheduler

    scheduler = Scheduler(app, lazy=True)
    scheduler.install_default_entries({})
    assert scheduler.data == {}  # no built-in entry (results are ignored: nothing to clean up)
    for name, entry in app.conf.beat_schedule.items():
        assert 0 < entry["options"]["expires"] <= entry["schedule"], name


@pytest.mark.django_db
@pytest.mark.parametrize("kind", ["slurm", "kubernetes", "ray", "local"])
def test_tasks_about_one_cluster_go_to_its_kinds_queue(kind):
    cluster = Cluster.objects.create(slug=f"c-{kind}", name=kind, kind=kind)
    queue = f"dispatch-{kind}"
    assert queue_of("jobs.tasks.dispatch_jobs", ([1, 2],), {"cluster_id": cluster.pk}) == queue
    assert queue_of("jobs.tasks.cancel_job", (1,), {"cluster_id": cluster.pk}) == queue
    assert queue_of("jobs.tasks.cancel_backend_job", (1, cluster.pk, "key", "7")) == queue
    assert queue_of("jobs.tasks.sync_cluster_task", (cluster.pk,)) == queue
    assert queue_of("factory.tasks.check_cluster", (cluster.pk,)) == queue
    assert queue_of("quotas.tasks.mirror_cluster_limits", (cluster.pk, None)) == queue


@pytest.mark.django_db
def test_other_tasks_go_to_their_purposes_queue():
    assert queue_of("quotas.tasks.admit_pending") == "admission"
    assert queue_of("billing.tasks.meter") == "metering"
    for name in ("jobs.tasks.notify_job_event", "jobs.tasks.deliver_notification"):
        assert queue_of(name, (1,)) == "notifications"
    assert queue_of("jobs.tasks.sweep_notifications") == "notifications"
    for name in (
        "jobs.tasks.sweep",
        "factory.tasks.check_cluster_health",
        "quotas.tasks.mirror_limits",
        "fleet.tasks.scrape_due",
        "fleet.tasks.prune",
    ):
        assert queue_of(name) == "default"
    # A cluster gone before its task was published: the default queue, where it ends quietly.
    assert queue_of("jobs.tasks.sync_cluster_task", (987654,)) == "default"


def test_every_task_goes_to_a_queue_some_worker_serves():
    for name, task in project_tasks().items():
        assert app.amqp.router.route({}, name, (), {}, task)["queue"].name in settings.FACTORY_QUEUES, name


def test_make_run_starts_a_worker_for_every_queue():
    script = (PROJECT_DIR / "scripts" / "run").read_text()
    started = re.search(r"for queue in ([^;]+); do", script)[1].split()
    assert sorted(started) == sorted(settings.FACTORY_QUEUES)
