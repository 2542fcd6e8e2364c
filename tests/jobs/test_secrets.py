"""Job secrets: write-only, sealed at rest, delivered to the job only."""

from __future__ import annotations

import json

import pytest
from cryptography.fernet import Fernet
from django.core.management import call_command
from django.db import connection
from rest_framework.test import APIClient

from factory import sealing
from factory.models import ApiToken
from jobs.choices import MAX_SECRET_VALUE_BYTES
from jobs.models import Job, JobEvent

pytestmark = pytest.mark.django_db

SECRET = "hf_s3cr3t-Token_that-must.never.show"


def spec(**overrides) -> dict:
    return {
        "tenant": "demo-lab",
        "name": "train",
        "command": "python train.py",
        "gpu_type": "h100",
        "gpu_count": 1,
        "time_limit_minutes": 5,
        "env": {"EPOCHS": "3"},
        "secrets": {"HF_TOKEN": SECRET},
        **overrides,
    }


@pytest.fixture
def api(owner):
    client = APIClient()
    # A real token: a body over the anonymous limit needs credentials the server can see.
    client.credentials(HTTP_AUTHORIZATION=f"Token {ApiToken.issue(owner)[1]}")
    return client


@pytest.fixture
def superuser(django_user_model):
    return django_user_model.objects.create_superuser("root", "root@example.org", "pw-root")


def test_a_secret_is_never_shown_back_anywhere(api, client, owner, superuser, cluster):
    created = api.post("/api/v1/jobs/", spec(), format="json")
    assert created.status_code == 202, created.content
    job = Job.objects.get(pk=created.json()["id"])
    assert created.json()["secret_names"] == ["HF_TOKEN"] and "secrets" not in created.json()
    seen = [
        created.content,
        api.get(f"/api/v1/jobs/{job.pk}/").content,
        api.get("/api/v1/jobs/").content,
        api.get(f"/api/v1/jobs/{job.pk}/events/").content,
        api.get("/api/v1/schema/").content,
    ]
    client.force_login(owner)
    seen += [client.get(f"/jobs/{job.pk}/").content, client.get("/jobs/").content]
    client.force_login(superuser)
    seen += [client.get(f"/admin/jobs/job/{job.pk}/change/").content]
    for body in seen:
        assert SECRET.encode() not in body
    assert b"HF_TOKEN" in seen[5]  # the job page names it
    assert not any(SECRET in e.message for e in JobEvent.objects.filter(job=job))
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT secrets_sealed, idempotency_fingerprint, env::text FROM jobs_job WHERE id = %s", [job.pk]
        )
        row = cursor.fetchone()
    assert all(SECRET not in value for value in row)
    assert job.secret_values() == {"HF_TOKEN": SECRET}


def test_a_form_with_a_bad_line_does_not_write_the_secret_back_into_the_page(client, owner, cluster):
    client.force_login(owner)
    data = {
        "tenant": owner.memberships.first().tenant.pk,
        "name": "bad name!",
        "command": "true",
        "gpu_type": cluster.pools.first().gpu_type.pk,
        "gpu_count": 1,
        "cpus": 1,
        "memory_gb": 1,
        "time_limit_minutes": 5,
        "secrets": f"HF_TOKEN={SECRET}",
    }
    response = client.post("/jobs/new/", data)
    assert response.status_code == 400 and b"Use 1 to 64 characters" in response.content
    assert not Job.objects.exists()
    assert SECRET.encode() not in response.content


@pytest.mark.parametrize(
    ("secrets", "message"),
    [
        ({"BAD NAME": "x"}, "not a valid environment variable name"),
        ({"X\n$(reboot)": "x"}, "not a valid environment variable name"),
        ({"CUDA_VISIBLE_DEVICES": "x"}, "set by the factory"),
        ({"TOKEN": "a\x00b"}, "without NUL"),
        ({"TOKEN": "x" * (MAX_SECRET_VALUE_BYTES + 1)}, "must be under"),
        ({"TOKEN": 5}, "must be a string"),
        ({"EPOCHS": "3"}, "also in env"),
        (["TOKEN=x"], "mapping of names to values"),
        ({f"T{i}": "x" for i in range(51)}, "At most 50 secrets"),
    ],
)
def test_hostile_secrets_get_a_field_error_and_create_nothing(api, cluster, secrets, message):
    response = api.post("/api/v1/jobs/", spec(secrets=secrets), format="json")
    assert response.status_code == 400
    errors = " ".join(response.json()["secrets"])
    assert message in errors
    assert "x" * 100 not in errors  # a value is never quoted back
    assert not Job.objects.exists()


def test_a_retry_with_other_secrets_is_a_conflict_not_a_replay(api, cluster):
    first = api.post("/api/v1/jobs/", spec(), format="json", HTTP_IDEMPOTENCY_KEY="k1")
    again = api.post("/api/v1/jobs/", spec(), format="json", HTTP_IDEMPOTENCY_KEY="k1")
    other = api.post(
        "/api/v1/jobs/", spec(secrets={"HF_TOKEN": "another"}), format="json", HTTP_IDEMPOTENCY_KEY="k1"
    )
    assert (first.status_code, again.status_code, other.status_code) == (202, 202, 409)
    assert first.json()["id"] == again.json()["id"]


def test_keys_rotate_without_losing_a_secret(settings, make_job):
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.FACTORY_SECRET_KEYS = [old]
    job = make_job(secrets={"HF_TOKEN": SECRET})
    settings.FACTORY_SECRET_KEYS = [new, old]
    assert Job.objects.get(pk=job.pk).secret_values() == {"HF_TOKEN": SECRET}
    call_command("reseal_job_secrets")
    settings.FACTORY_SECRET_KEYS = [new]
    assert Job.objects.get(pk=job.pk).secret_values() == {"HF_TOKEN": SECRET}
    settings.FACTORY_SECRET_KEYS = [old]
    with pytest.raises(sealing.SealBroken):
        Job.objects.get(pk=job.pk).secret_values()


def test_ray_gets_secrets_in_its_runtime_env_never_in_the_entrypoint(make_job, h100):
    from factory.adapters.ray import RayAdapter
    from factory.models import Cluster, Pool

    ray = Cluster.objects.create(
        slug="ray", name="Ray", kind="ray", connection={"address": "http://ray:8265"}
    )
    Pool.objects.create(cluster=ray, gpu_type=h100, capacity=8)
    job = make_job(secrets={"HF_TOKEN": SECRET + "$HOME"})
    body = RayAdapter(ray).submission(job)
    assert body["runtime_env"]["env_vars"]["HF_TOKEN"] == SECRET + "$HOME"
    assert SECRET not in json.dumps({k: v for k, v in body.items() if k != "runtime_env"})


def test_a_backend_that_cannot_deliver_secrets_never_runs_the_job_without_them(
    make_job, cluster, monkeypatch
):
    """Every backend here delivers them; an adapter that does not say so (the default) is refused
    the job rather than given it without its secrets."""
    from factory.adapters.base import Adapter
    from factory.adapters.local import LocalAdapter
    from jobs.choices import JobState
    from jobs.tasks import dispatch_jobs
    from tests.support import admit

    monkeypatch.setattr(LocalAdapter, "delivers_secrets", Adapter.delivers_secrets)
    job = make_job(secrets={"HF_TOKEN": SECRET})
    admit(job, cluster)
    dispatch_jobs([job.pk])
    job.refresh_from_db()
    assert job.state == JobState.REJECTED and "cannot deliver secrets" in job.reason
    assert cluster.adapter().find(job) is None
