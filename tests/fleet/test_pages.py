"""The fleet pages (platform admins only), the job page's GPU use, and /metrics."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from fleet.choices import Health
from fleet.models import Gpu, GpuMinute, JobGpuEnergy, Node
from fleet.scrape import scrape_cluster
from jobs.choices import JobState
from jobs.models import Job

pytestmark = pytest.mark.django_db


def many_nodes(cluster, h100, count: int) -> None:
    nodes = Node.objects.bulk_create(
        Node(cluster=cluster, name=f"n{i:04d}", gpu_type=h100, exporter_url="http://127.0.0.1:9/metrics")
        for i in range(count)
    )
    Gpu.objects.bulk_create(
        Gpu(node=n, cluster=cluster, gpu_type=h100, index=i, uuid=f"GPU-{n.name}-{i}", temperature_c=40 + i)
        for n in nodes
        for i in range(8)
    )


def test_only_platform_admins_see_the_fleet(client, cluster, owner, platform_admin):
    client.force_login(owner)
    assert client.get("/clusters/local/fleet/").status_code == 404
    assert client.get("/clusters/local/nodes/local-h100/").status_code == 404
    client.force_login(platform_admin)
    assert client.get("/clusters/local/fleet/").status_code == 200


def test_the_cluster_page_pages_a_thousand_nodes_and_filters_the_unhealthy(
    client, cluster, h100, platform_admin
):
    many_nodes(cluster, h100, 1000)
    Gpu.objects.filter(uuid="GPU-n0777-3").update(health=Health.FAILED, health_reason="XID 79 on GPU 3")
    client.force_login(platform_admin)
    page = client.get("/clusters/local/fleet/").content.decode()
    assert "Page 1 of 40 (1000 nodes)" in page and page.count('class="gpu-row') == 200
    assert 'id="node-n0777"' not in page and 'id="node-n0024"' in page
    unhealthy = client.get("/clusters/local/fleet/?health=not_healthy").content.decode()
    assert "(1 node)" in unhealthy and "XID 79 on GPU 3" in unhealthy and 'id="node-n0001"' not in unhealthy
    assert "8000: " in unhealthy and "1 failed" in unhealthy


def test_htmx_asks_for_the_live_part_only(client, simulator, cluster, platform_admin):
    scrape_cluster(cluster)
    client.force_login(platform_admin)
    response = client.get("/clusters/local/fleet/", headers={"HX-Request": "true"})
    text = response.content.decode()
    assert text.lstrip().startswith('<div id="fleet-live"') and "<html" not in text
    assert "HX-Request" in response["Vary"] and text.count('class="gpu-row') == 8


def test_node_page_charts_the_last_hour(client, simulator, cluster, platform_admin):
    now = timezone.now()
    for minutes in (50, 20, 0):
        scrape_cluster(cluster, now=now - timedelta(minutes=minutes))
    assert GpuMinute.objects.filter(gpu__node__name="local-h100").count() == 12
    client.force_login(platform_admin)
    page = client.get("/clusters/local/nodes/local-h100/").content.decode()
    assert page.count("<svg") == 3 and page.count("<polyline") == 12


def test_job_page_shows_measured_energy_average_use_and_an_idle_warning(
    client, make_job, cluster, owner, h100
):
    job = make_job()
    now = timezone.now()
    Job.objects.filter(pk=job.pk).update(
        state=JobState.RUNNING, cluster=cluster, started_at=now - timedelta(hours=1)
    )
    node = Node.objects.create(
        cluster=cluster, name="local-h100", gpu_type=h100, exporter_url="http://x/metrics"
    )
    gpu = Gpu.objects.create(node=node, cluster=cluster, gpu_type=h100, index=0, uuid="GPU-x")
    JobGpuEnergy.objects.create(
        job=job, attempt=0, gpu=gpu, gpu_uuid="GPU-x",
        start_mj=0, end_mj=360_000_000, measured_mj=360_000_000,
        samples=360, utilisation_sum=360 * 3.0, memory_sum=360 * 1024.0,
        first_at=now - timedelta(hours=1), last_at=now, busy_at=now - timedelta(minutes=40),
    )  # fmt: skip
    client.force_login(owner)
    page = client.get(job.get_absolute_url()).content.decode()
    assert "0.1000 kWh measured by its 1 GPU" in page
    assert "3 % utilisation, 1024 MiB memory on average" in page
    assert "idle (under 5 % utilisation) for 40 minutes" in page


def test_metrics_need_a_token_or_an_allowed_address(client, settings, make_job, simulator, cluster, quotas):
    settings.FACTORY_METRICS_ALLOWED_NETWORKS = ["10.9.0.0/16"]
    settings.FACTORY_METRICS_TOKEN = "s3cret-metrics-token"
    from factory import metrics

    metrics._networks.cache_clear()
    make_job()
    scrape_cluster(cluster)
    assert client.get("/metrics").status_code == 404
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 404
    text = client.get("/metrics", headers={"Authorization": "Bearer s3cret-metrics-token"}).content.decode()
    assert 'factory_jobs{gpu_type="h100",state="pending",tenant="demo-lab"} 1.0' in text
    assert 'factory_pending_workloads{gpu_type="h100",tenant="demo-lab"} 1.0' in text
    assert 'factory_cluster_queue_nominal_quota{gpu_type="h100",tenant="demo-lab"} 4.0' in text
    assert 'factory_fleet_gpus{cluster="local",health="healthy"} 8.0' in text
    assert "factory_admission_wait_time_seconds_bucket" in text and "factory_fleet_power_watts" in text
    assert client.get("/metrics", REMOTE_ADDR="10.9.3.4").status_code == 200
    metrics._networks.cache_clear()


def test_ledger_lines_say_whether_their_energy_was_measured_or_estimated(
    client, make_job, cluster, owner, finance_user, h100
):
    """On the API's usage lines, the finance lines page and the job page."""
    from billing import metering
    from tests.jobs.test_api import client_for

    now = timezone.now()
    jobs = []
    for name in ("measured-job", "estimated-job"):
        job = make_job(name=name)
        Job.objects.filter(pk=job.pk).update(
            state=JobState.SUCCEEDED, cluster=cluster, started_at=now - timedelta(hours=1), ended_at=now
        )
        job.refresh_from_db()
        jobs.append(job)
    node = Node.objects.create(
        cluster=cluster, name="local-h100", gpu_type=h100, exporter_url="http://x/metrics"
    )
    gpu = Gpu.objects.create(node=node, cluster=cluster, gpu_type=h100, index=0, uuid="GPU-x")
    JobGpuEnergy.objects.create(
        job=jobs[0], attempt=0, gpu=gpu, gpu_uuid="GPU-x", start_mj=0, end_mj=1_800_000_000,
        measured_mj=1_800_000_000, samples=360, first_at=now, last_at=now, busy_at=now,
    )  # fmt: skip
    for job in jobs:
        lines = metering.lines_for_attempt(job, 0, job.started_at, job.ended_at, "usage", metering.Pricing())
        metering.record(lines)
    rows = client_for(owner).get("/api/v1/usage/").json()["results"]
    assert {r["job"]: r["energy_measured"] for r in rows} == {jobs[0].pk: True, jobs[1].pk: False}
    client.force_login(finance_user)
    month = now.strftime("%Y-%m")
    page = client.get(f"/billing/chargeback/{month}/demo-lab/h100/").content.decode()
    assert page.count("kWh measured") == 1 and page.count("kWh estimated") == 1
    client.force_login(owner)
    assert "kWh measured" in client.get(jobs[0].get_absolute_url()).content.decode()
    assert "kWh estimated" in client.get(jobs[1].get_absolute_url()).content.decode()


def test_the_fleets_health_history_is_searched_in_the_admin_and_never_edited(
    client, simulator, cluster, platform_admin
):
    from fleet.models import HealthEvent, HealthEventKind

    scrape_cluster(cluster)
    node = Node.objects.get(name="local-h100")
    event = HealthEvent.of(
        cluster.pk,
        node,
        HealthEventKind.HEALTH,
        timezone.now(),
        health=Health.WARNING,
        reason="GPU exporter: timed out",
    )
    event.save()
    client.force_login(platform_admin)
    listing = client.get("/admin/fleet/healthevent/?q=timed+out")
    assert listing.status_code == 200 and "GPU exporter: timed out" in listing.content.decode()
    assert client.get(f"/admin/fleet/healthevent/{event.pk}/delete/").status_code == 403
    assert client.post(f"/admin/fleet/healthevent/{event.pk}/change/", {"reason": "x"}).status_code == 403
    assert HealthEvent.objects.get().reason == "GPU exporter: timed out"
