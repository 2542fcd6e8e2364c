"""The Django admin shows jobs; it never changes or deletes them (the lifecycle does)."""

from __future__ import annotations

import pytest

from jobs.choices import JobState
from jobs.models import Job, JobEvent
from tests.support import admit

pytestmark = pytest.mark.django_db


@pytest.fixture
def superuser(django_user_model):
    return django_user_model.objects.create_superuser("root", "root@example.org", "pw-root")


def test_the_admin_cannot_delete_a_running_job_its_reservation_or_its_events(
    client, superuser, make_job, cluster
):
    job = make_job()
    admit(job, cluster)
    job.mark_submitted("ext-1")
    job.mark_running(None)
    events = JobEvent.objects.filter(job=job).count()
    client.force_login(superuser)

    response = client.post(f"/admin/jobs/job/{job.pk}/delete/", {"post": "yes"})
    assert response.status_code == 403
    bulk = client.post(
        "/admin/jobs/job/", {"action": "delete_selected", "_selected_action": [job.pk], "post": "yes"}
    )
    assert bulk.status_code in (200, 302)
    job.refresh_from_db()
    assert job.state == JobState.RUNNING
    assert JobEvent.objects.filter(job=job).count() == events
    assert Job.objects.filter(pk=job.pk).exists()
