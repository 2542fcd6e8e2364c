"""Choosing where a job runs, a cluster or a region, within what the tenant's residency permits:
the form offers only those, the API and the form refuse any other with a field error, and
admission places the job only there."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from factory.choices import ClusterKind
from factory.models import Cluster, Pool
from jobs.models import Job
from quotas.admission import admit_pending
from quotas.models import Quota

pytestmark = pytest.mark.django_db

URL = "/api/v1/jobs/"


@pytest.fixture(autouse=True)
def run_on_commit(django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks():
        yield


@pytest.fixture
def regions(tenant, h100, cluster):
    """`local` (region local) and three more h100 clusters: eu-a and eu-b in eu-west, us-a in
    us-east. The tenant may run in local and eu-west only."""
    made = {"local": cluster}
    for slug, region in (("eu-a", "eu-west"), ("eu-b", "eu-west"), ("us-a", "us-east")):
        made[slug] = Cluster.objects.create(slug=slug, name=slug, kind=ClusterKind.LOCAL, region=region)
        Pool.objects.create(cluster=made[slug], gpu_type=h100, capacity=4)
    tenant.regions = ["local", "eu-west"]
    tenant.save()
    Quota.objects.create(tenant=tenant, gpu_type=h100, nominal=16)
    return made


@pytest.fixture
def api(owner):
    client = APIClient()
    client.force_authenticate(owner)
    return client


def body(**overrides) -> dict:
    return {
        "tenant": "demo-lab",
        "name": "placed",
        "command": "true",
        "gpu_type": "h100",
        "gpu_count": 1,
        "time_limit_minutes": 10,
        **overrides,
    }


def test_a_job_asked_to_run_on_a_cluster_is_placed_there_only(api, regions):
    response = api.post(URL, body(cluster="eu-b"), format="json")
    assert response.status_code == 202, response.content
    assert (response.json()["requested_cluster"], response.json()["requested_region"]) == ("eu-b", "")
    admit_pending()
    job = Job.objects.get()
    assert job.cluster.slug == "eu-b"


def test_a_job_asked_to_run_in_a_region_stays_in_it(api, regions):
    ids = [api.post(URL, body(region="eu-west"), format="json").json()["id"] for _ in range(6)]
    admit_pending()
    placed = set(Job.objects.filter(pk__in=ids).values_list("cluster__region", flat=True))
    assert placed == {"eu-west"}


def test_a_job_waits_while_the_cluster_it_asked_for_takes_no_jobs(api, regions):
    job_id = api.post(URL, body(cluster="eu-a"), format="json").json()["id"]
    Cluster.objects.filter(slug="eu-a").update(draining=True)
    admit_pending()
    job = Job.objects.get(pk=job_id)
    assert (job.state, job.reason) == ("pending", "no cluster eu-a (asked for) accepting jobs has h100 GPUs")


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        (
            {"cluster": "us-a"},
            "cluster",
            "us-a is in region us-east; demo-lab may run jobs only in local, eu-west.",
        ),
        ({"region": "us-east"}, "region", "demo-lab may run jobs only in local, eu-west, not in us-east."),
        ({"cluster": "nowhere"}, "cluster", "Unknown cluster nowhere."),
        ({"cluster": "eu-a", "region": "local"}, "region", "eu-a is in region eu-west, not in local."),
        ({"region": "mars"}, "region", "No cluster accepting jobs in region mars has h100 GPUs."),
    ],
)
def test_a_place_outside_the_tenants_residency_is_a_field_error(api, regions, overrides, field, message):
    response = api.post(URL, body(**overrides), format="json")
    assert response.status_code == 400
    assert response.json() == {field: [message]}
    assert not Job.objects.exists()


def test_a_draining_cluster_cannot_be_chosen(api, regions):
    Cluster.objects.filter(slug="eu-b").update(draining=True)
    from django.core.cache import cache

    cache.clear()  # the submission checks read the pools through a short cache
    response = api.post(URL, body(cluster="eu-b"), format="json")
    assert response.json() == {"cluster": ["eu-b has no h100 GPUs that accept jobs now."]}


def test_the_estimate_honours_the_choice(api, regions, h100):
    from datetime import date

    from billing.models import RateCard

    RateCard.objects.create(
        gpu_type=h100, currency="EUR", price_per_gpu_hour=2, effective_from=date(2026, 1, 1)
    )
    data = api.post("/api/v1/jobs/estimate/", body(cluster="eu-b"), format="json").json()
    assert data["admits_now"] and "on eu-b" in data["admission"]


# --- the form -------------------------------------------------------------------------------------


@pytest.fixture
def browser(client, owner):
    client.force_login(owner)
    return client


def form(tenant, h100, **overrides) -> dict:
    return {
        "tenant": str(tenant.pk),
        "name": "placed",
        "command": "true",
        "gpu_type": str(h100.pk),
        "gpu_count": "1",
        "cpus": "4",
        "memory_gb": "16",
        "time_limit_minutes": "30",
        **overrides,
    }


def test_the_form_offers_only_places_the_tenant_may_run(browser, regions):
    page = browser.get("/jobs/new/").content.decode()
    assert '<label for="id_placement">Cluster or region</label>' in page
    for offered in ('value="cluster:eu-a"', 'value="cluster:local"', 'value="region:eu-west"'):
        assert offered in page
    assert "us-a" not in page and "us-east" not in page


def test_the_choices_follow_the_tenant_chosen(browser, regions, owner, tenant, other_tenant):
    from factory.models import Membership

    Membership.objects.create(user=owner, tenant=other_tenant)  # no regions set: anywhere
    page = browser.get("/jobs/new/").content.decode()
    assert 'hx-get="/jobs/new/placement/" hx-target="#id_placement"' in page
    response = browser.get(f"/jobs/new/placement/?tenant={other_tenant.pk}", HTTP_HX_REQUEST="true")
    assert response.content.decode().startswith('<select name="placement"')
    assert 'value="cluster:us-a"' in response.content.decode()
    mine = browser.get(f"/jobs/new/placement/?tenant={tenant.pk}", HTTP_HX_REQUEST="true")
    assert 'value="cluster:us-a"' not in mine.content.decode()


def test_the_form_places_the_job_where_asked(browser, tenant, h100, regions):
    response = browser.post("/jobs/new/", form(tenant, h100, placement="region:eu-west"))
    job = Job.objects.get()
    assert response.status_code == 302 and job.requested_region == "eu-west"
    run_again = browser.get(f"/jobs/new/?rerun={job.pk}").content.decode()
    assert 'value="region:eu-west" selected' in run_again


def test_the_form_refuses_a_place_outside_the_residency(browser, tenant, h100, regions):
    response = browser.post("/jobs/new/", form(tenant, h100, placement="cluster:us-a"))
    assert response.status_code == 400
    assert "Select a valid choice" in response.content.decode()
    assert not Job.objects.exists()


def test_the_form_names_the_field_when_the_clusters_gpus_do_not_fit(browser, tenant, h100, regions):
    response = browser.post("/jobs/new/", form(tenant, h100, placement="cluster:eu-a", gpu_count="8"))
    assert response.status_code == 400
    assert response.context["form"].errors["gpu_count"]
    assert not Job.objects.exists()
