"""Job templates (personal or shared with the tenant) and "Run again": the new-job form prefilled,
never with a secret, never from another tenant's job or template."""

from __future__ import annotations

import pytest

from factory.models import Membership
from jobs.models import Job, JobTemplate

pytestmark = pytest.mark.django_db

SECRET = "hf_never-copied-value"


@pytest.fixture
def form(tenant, h100):
    return {
        "tenant": tenant.pk,
        "name": "sweep-base",
        "command": "python train.py --lr $LR",
        "image": "",
        "gpu_type": h100.pk,
        "gpu_count": 2,
        "cpus": 8,
        "memory_gb": 32,
        "time_limit_minutes": 120,
        "env": "LR=0.001\nEPOCHS=3",
        "secrets": f"HF_TOKEN={SECRET}",
    }


def save(client, form, name="base", shared=False):
    data = {**form, "save_template": "1", "template-name": name}
    if shared:
        data["template-shared"] = "on"
    return client.post("/jobs/new/", data)


def test_a_spec_saved_as_a_template_prefills_the_form_without_its_secrets(client, owner, form, cluster):
    client.force_login(owner)
    response = save(client, form)
    template = JobTemplate.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/jobs/new/?template={template.pk}"
    assert template.spec == {
        "name": "sweep-base",
        "command": "python train.py --lr $LR",
        "image": "",
        "gpu_type": "h100",
        "gpu_count": 2,
        "nodes": 1,
        "gpus_per_node": 2,
        "cpus": 8,
        "memory_gb": 32,
        "time_limit_minutes": 120,
        "priority": 0,
        "env": {"LR": "0.001", "EPOCHS": "3"},
    }
    assert not Job.objects.exists()  # saved, not submitted
    page = client.get(response["Location"]).content.decode()
    assert "python train.py --lr $LR" in page and "LR=0.001\nEPOCHS=3" in page and 'value="120"' in page
    assert SECRET not in page
    # Saving under the same name replaces the spec.
    save(client, {**form, "gpu_count": 1})
    assert JobTemplate.objects.get().spec["gpu_count"] == 1


def test_shared_templates_reach_the_tenants_members_and_nobody_else(
    client, owner, teammate, outsider, form, cluster
):
    client.force_login(owner)
    save(client, form, name="mine")
    save(client, form, name="ours", shared=True)
    mine, ours = JobTemplate.objects.get(name="mine"), JobTemplate.objects.get(name="ours")

    client.force_login(teammate)
    assert client.get(f"/jobs/new/?template={ours.pk}").status_code == 200
    assert client.get(f"/jobs/new/?template={mine.pk}").status_code == 404
    page = client.get("/jobs/new/").content.decode()
    assert "ours" in page and f"?template={mine.pk}" not in page
    assert client.post(f"/jobs/templates/{ours.pk}/delete/").status_code == 404  # not theirs to delete

    client.force_login(outsider)
    for template in (mine, ours):
        assert client.get(f"/jobs/new/?template={template.pk}").status_code == 404
    assert client.get("/jobs/new/?template=x").status_code == 404

    Membership.objects.filter(user=owner).delete()  # the owner left the tenant
    client.force_login(owner)
    assert client.get(f"/jobs/new/?template={mine.pk}").status_code == 404

    client.force_login(teammate)
    Membership.objects.create(user=owner, tenant=ours.tenant)
    client.force_login(owner)
    assert client.post(f"/jobs/templates/{mine.pk}/delete/").status_code == 302
    assert list(JobTemplate.objects.values_list("name", flat=True)) == ["ours"]


def test_run_again_prefills_the_form_from_a_job_but_never_its_secrets(
    client, owner, outsider, make_job, other_tenant, cluster
):
    job = make_job(
        name="first-run", command="python train.py", env={"EPOCHS": "9"}, secrets={"HF_TOKEN": SECRET}
    )
    client.force_login(owner)
    assert f"/jobs/new/?rerun={job.pk}" in client.get(f"/jobs/{job.pk}/").content.decode()
    page = client.get(f"/jobs/new/?rerun={job.pk}").content.decode()
    assert "first-run" in page and "EPOCHS=9" in page
    assert "Secrets are never copied: enter HF_TOKEN again" in page and SECRET not in page

    theirs = make_job(tenant=other_tenant, owner=outsider, name="theirs")
    assert client.get(f"/jobs/new/?rerun={theirs.pk}").status_code == 404


def test_a_template_needs_a_valid_name_and_a_valid_spec(client, owner, form, cluster):
    client.force_login(owner)
    response = save(client, form, name="")
    assert response.status_code == 400 and "Name the template." in response.content.decode()
    response = save(client, form, name="bad name!")
    assert response.status_code == 400
    response = save(client, {**form, "gpu_count": 99}, name="big")
    assert response.status_code == 400 and "At most 4 h100 GPUs" in response.content.decode()
    assert not JobTemplate.objects.exists() and not Job.objects.exists()


def test_the_form_sets_a_priority_within_its_bounds(client, owner, form, cluster):
    client.force_login(owner)
    data = {k: v for k, v in form.items() if k != "secrets"}
    assert client.post("/jobs/new/", {**data, "priority": "50"}).status_code == 302
    assert Job.objects.get().priority == 50
    refused = client.post("/jobs/new/", {**data, "name": "too-high", "priority": "101"})
    assert refused.status_code == 400 and "less than or equal to 100" in refused.content.decode()
    assert Job.objects.count() == 1
