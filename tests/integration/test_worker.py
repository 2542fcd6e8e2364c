"""A real Celery worker on Redis runs jobs end to end, and a worker killed mid-flight loses none."""

from __future__ import annotations

import pytest

from jobs.choices import JobState
from jobs.models import Job
from tests.jobs.test_api import client_for

from .conftest import wait_until

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def submit(api, **overrides) -> int:
    body = {
        "tenant": "demo-lab",
        "name": "job",
        "command": "echo ok",
        "gpu_type": "h100",
        "gpu_count": 1,
        "time_limit_minutes": 5,
    }
    body.update(overrides)
    response = api.post("/api/v1/jobs/", body, format="json")
    assert response.status_code == 202, response.content
    return response.json()["id"]


def states(ids) -> dict[int, str]:
    return dict(Job.objects.filter(pk__in=ids).values_list("pk", "state"))


def test_worker_runs_submitted_jobs_to_their_end(celery_worker_process, owner, cluster, quotas):
    api = client_for(owner)
    ok = submit(api, name="ok", command="echo fine")
    bad = submit(api, name="bad", command="echo failing >&2; exit 7")
    cancelled = submit(api, name="long", command="sleep 60")
    wait_until(lambda: states([cancelled])[cancelled] == JobState.RUNNING, 30, "the long job to run")
    assert api.post(f"/api/v1/jobs/{cancelled}/cancel/").status_code == 202

    ids = [ok, bad, cancelled]
    wait_until(lambda: all(Job.objects.get(pk=i).is_terminal for i in ids), 30, "all jobs to end")
    final = {j.name: j for j in Job.objects.filter(pk__in=ids)}
    assert (final["ok"].state, final["ok"].exit_code) == (JobState.SUCCEEDED, 0)
    assert (final["bad"].state, final["bad"].exit_code) == (JobState.FAILED, 7)
    assert final["long"].state == JobState.CANCELLED
    assert api.get(f"/api/v1/jobs/{bad}/logs/").json()["text"] == "failing\n"


def test_killing_the_worker_loses_no_job_and_runs_none_twice(
    celery_worker_process, owner, cluster, quotas, job_scratch
):
    api = client_for(owner)
    runs = job_scratch / "runs"
    # Six jobs of two GPUs on four: two run, four wait for admission when the worker dies.
    ids = [submit(api, name=f"j{i}", gpu_count=2, command=f"echo j{i} >> {runs}; sleep 2") for i in range(6)]
    wait_until(lambda: list(states(ids).values()).count(JobState.RUNNING) == 2, 30, "two jobs to run")
    celery_worker_process.kill()
    assert any(s == JobState.PENDING for s in states(ids).values())

    celery_worker_process.start()
    wait_until(
        lambda: all(s == JobState.SUCCEEDED for s in states(ids).values()),
        90,
        f"all jobs to succeed after the restart; worker log:\n{celery_worker_process.log()[-3000:]}",
    )
    assert sorted(runs.read_text().split()) == sorted(f"j{i}" for i in range(6))
    for job in Job.objects.filter(pk__in=ids):
        assert job.events.filter(kind="state", state=JobState.RUNNING).count() == 1
