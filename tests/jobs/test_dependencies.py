"""Job dependencies with Slurm's afterok/afterany meaning, kept by the portal on every backend."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from factory.cli.client import CliError
from factory.cli.spec import parse_dependency
from jobs.choices import JobState
from jobs.models import Job, JobDependency
from quotas.admission import admit_pending

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def run_on_commit(django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks():
        yield


@pytest.fixture
def api(owner):
    client = APIClient()
    client.force_authenticate(owner)
    return client


def spec(**overrides) -> dict:
    return {
        "tenant": "demo-lab",
        "name": "step",
        "command": "true",
        "gpu_type": "h100",
        "gpu_count": 1,
        "time_limit_minutes": 5,
        **overrides,
    }


def end(job: Job, state: str, exit_code: int = 0) -> None:
    job.refresh_from_db()
    job.mark_submitted("x")
    job.finish(state, exit_code=exit_code)


def submitted(api, **overrides) -> Job:
    response = api.post("/api/v1/jobs/", spec(**overrides), format="json")
    assert response.status_code == 202, response.content
    return Job.objects.get(pk=response.json()["id"])


def test_a_job_after_ok_waits_for_its_dependency_to_succeed(api, cluster, quotas):
    first = submitted(api, name="prepare")
    second = submitted(api, name="train", after_ok=[first.pk])
    assert api.get(f"/api/v1/jobs/{second.pk}/").json()["after_ok"] == [first.pk]
    admit_pending()
    first.refresh_from_db()
    second.refresh_from_db()
    assert first.state == JobState.ADMITTED
    assert (second.state, second.reason) == (
        JobState.PENDING,
        f"waiting for job #{first.pk} to succeed",
    )
    end(first, JobState.SUCCEEDED)
    admit_pending()
    second.refresh_from_db()
    assert second.state == JobState.ADMITTED


def test_a_failed_after_ok_dependency_cancels_the_job_and_after_any_still_runs(api, cluster, quotas):
    first = submitted(api, name="prepare")
    strict = submitted(api, name="strict", after_ok=[first.pk])
    lenient = submitted(api, name="cleanup", after_any=[first.pk])
    chained = submitted(api, name="chained", after_ok=[strict.pk])
    admit_pending()
    end(first, JobState.FAILED, exit_code=2)
    admit_pending()  # strict is cancelled: its dependency failed
    admit_pending()  # and so chained, whose dependency was cancelled
    for job in (strict, lenient, chained):
        job.refresh_from_db()
    assert (strict.state, strict.reason) == (
        JobState.CANCELLED,
        f"dependency: job #{first.pk} it runs after ended failed",
    )
    assert lenient.state == JobState.ADMITTED
    assert chained.state == JobState.CANCELLED and f"#{strict.pk}" in chained.reason
    assert "dependency" in strict.events.last().message


def test_dependencies_on_other_tenants_jobs_or_nonsense_are_refused_and_create_nothing(
    api, cluster, quotas, make_job, other_tenant, outsider
):
    theirs = make_job(tenant=other_tenant, owner=outsider)
    mine = submitted(api, name="mine")
    before = Job.objects.count()
    for body, field, message in (
        (spec(after_ok=[theirs.pk]), "after_ok", f"No job #{theirs.pk} in tenant demo-lab."),
        (spec(after_ok=[999999]), "after_ok", "No job #999999 in tenant demo-lab."),
        (spec(after_ok=[mine.pk], after_any=[mine.pk]), "after_any", f"Job {mine.pk} is also in after_ok."),
        (spec(after_ok=["x"]), "after_ok", "A valid integer is required."),
        (spec(after_ok=[0]), "after_ok", "greater than or equal to 1"),
        (spec(after_ok=list(range(1, 102))), "after_ok", "Ensure this field has no more than 100 elements."),
    ):
        response = api.post("/api/v1/jobs/", body, format="json")
        assert response.status_code == 400, body
        assert message in str(response.json()[field]), response.json()
    assert Job.objects.count() == before and not JobDependency.objects.exists()


def test_the_form_takes_job_numbers(client, owner, tenant, h100, cluster, quotas, make_job):
    client.force_login(owner)
    first = make_job(name="first")
    form = {
        "tenant": tenant.pk,
        "name": "second",
        "command": "true",
        "gpu_type": h100.pk,
        "gpu_count": 1,
        "cpus": 1,
        "memory_gb": 1,
        "time_limit_minutes": 5,
        "after_ok": f"#{first.pk}",
    }
    response = client.post("/jobs/new/", form)
    assert response.status_code == 302
    second = Job.objects.get(name="second")
    assert list(second.dependencies.values_list("on_id", "kind")) == [(first.pk, "after_ok")]
    page = client.get(f"/jobs/{second.pk}/").content.decode()
    assert f'after succeeds <a href="/jobs/{first.pk}/">#{first.pk}</a>' in page
    bad = client.post("/jobs/new/", {**form, "after_ok": "twelve"})
    assert bad.status_code == 400 and "twelve is not a job number." in bad.content.decode()


def test_the_command_line_reads_sbatch_dependencies():
    assert parse_dependency("afterok:12:13,afterany:14") == {"after_ok": [12, 13], "after_any": [14]}
    for bad in ("after:12", "afterok:", "afterok:x", "singleton"):
        with pytest.raises(CliError):
            parse_dependency(bad)
