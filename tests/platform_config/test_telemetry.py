"""A cluster's telemetry source in the platform file: embedded or the site's Prometheus, its
credentials referenced like every connection secret, planned and applied field by field, in the
audit trail, exported so that planning the export shows no changes."""

from __future__ import annotations

import pytest
from django.utils import timezone

from factory.models import Cluster
from fleet.models import ClusterTelemetry
from platform_config import applying, loading, planning
from tests.jobs.test_api import client_for
from tests.support import trail

from .test_bad_input import problems

pytestmark = pytest.mark.django_db

TOKEN = "prom-s3cret-token"
PLATFORM = """
gpu_types:
- {slug: h100, name: NVIDIA H100}
clusters:
- slug: eu-slurm
  name: EU Slurm
  kind: slurm
  connection: {default_partition: gpu}
  pools:
  - {gpu_type: h100, capacity: 16, partition: gpu}
  telemetry:
    source: prometheus
    interval_seconds: 15
    prometheus:
      url: https://prometheus.example.org
      match: {job: dcgm, cluster: eu}
      bearer_token: {env: TEST_PROM_TOKEN}
      timeout: 3.0
- slug: lab
  name: Lab
  kind: slurm
"""


@pytest.fixture(autouse=True)
def prom_token(monkeypatch):
    monkeypatch.setenv("TEST_PROM_TOKEN", TOKEN)


def test_a_prometheus_source_is_planned_and_applied_its_token_sealed_and_never_shown(
    platform_file, run_platform
):
    path = platform_file(PLATFORM)
    status, out, _ = run_platform("plan", path)
    assert status == 2, out
    assert (
        "+ telemetry eu-slurm\n    source: 'prometheus'\n    enabled: true\n    interval_seconds: 15" in out
    )
    assert "prometheus.bearer_token: (secret)" in out
    assert "prometheus.url: 'https://prometheus.example.org'" in out
    assert "telemetry lab" not in out  # the defaults: nothing to write
    assert TOKEN not in out
    status, out, _ = run_platform("apply", path)
    assert status == 0, out
    telemetry = ClusterTelemetry.objects.get(cluster__slug="eu-slurm")
    assert (telemetry.source, telemetry.interval_seconds) == ("prometheus", 15)
    assert telemetry.prometheus == {
        "url": "https://prometheus.example.org",
        "match": {"job": "dcgm", "cluster": "eu"},
        "timeout": 3.0,
    }
    assert telemetry.prometheus_settings().bearer_token == TOKEN
    assert TOKEN not in telemetry.prometheus_secrets_sealed
    assert not ClusterTelemetry.objects.filter(cluster__slug="lab").exists()
    entry = trail(ClusterTelemetry).get()
    assert entry.additional_data["via"] == "platform file"
    assert entry.changes["prometheus.bearer_token"] == [None, "(secret)"]
    assert TOKEN not in str(entry.changes)
    status, out, _ = run_platform("plan", path)
    assert (status, out.strip()) == (0, "No changes: the portal matches the file.")


def test_a_rotated_token_is_a_change_shown_as_secret(platform_file, run_platform, monkeypatch):
    path = platform_file(PLATFORM)
    run_platform("apply", path)
    monkeypatch.setenv("TEST_PROM_TOKEN", "rotated-token")
    status, out, _ = run_platform("plan", path)
    assert status == 2
    assert (
        "~ telemetry eu-slurm\n    prometheus.bearer_token: (secret) → (secret)\nPlan: 0 to create, 1" in out
    )
    run_platform("apply", path)
    telemetry = ClusterTelemetry.objects.get(cluster__slug="eu-slurm")
    assert telemetry.prometheus_settings().bearer_token == "rotated-token"


def test_a_row_the_scraper_made_meanwhile_is_changed_not_doubled(platform_file, run_platform):
    plan = planning.make_plan(loading.load(platform_file(PLATFORM)))
    Cluster.objects.create(slug="eu-slurm", name="EU Slurm", kind="slurm")
    with pytest.raises(loading.Invalid):  # the plan reviewed is not the plan now
        applying.apply(loading.load(platform_file(PLATFORM)), expect=plan.digest)
    scraped = ClusterTelemetry.of(Cluster.objects.get(slug="eu-slurm"))
    scraped.mark_unavailable("connection refused", timezone.now())
    status, out, _ = run_platform("apply", platform_file(PLATFORM))
    assert status == 0, out
    telemetry = ClusterTelemetry.objects.get(cluster__slug="eu-slurm")
    assert telemetry.pk == scraped.pk and telemetry.source == "prometheus"
    assert telemetry.unavailable_since is None  # judged afresh by the next cycle


def test_export_keeps_the_token_and_plans_no_changes(platform_file, run_platform, tmp_path):
    run_platform("apply", platform_file(PLATFORM))
    exported = tmp_path / "exported.yaml"
    run_platform("export", "--output", exported)
    text = exported.read_text()
    assert TOKEN not in text
    assert "  telemetry:\n    source: prometheus\n" in text
    assert "    bearer_token:\n        keep: true\n" in text
    assert "lab" in text and text.count("telemetry:") == 1
    status, out, _ = run_platform("plan", exported)
    assert (status, out.strip()) == (0, "No changes: the portal matches the file.")


def test_left_out_the_source_stays_and_with_prune_returns_to_the_default(platform_file, run_platform):
    run_platform("apply", platform_file(PLATFORM))
    without = PLATFORM.split("  telemetry:\n")[0] + "- {slug: lab, name: Lab, kind: slurm}\n"
    status, out, _ = run_platform("plan", platform_file(without))
    assert (status, out.strip()) == (0, "No changes: the portal matches the file.")
    status, out, _ = run_platform("plan", platform_file("prune: true\n" + without))
    assert status == 2
    assert "~ telemetry eu-slurm\n    source: 'prometheus' → 'embedded'" in out
    assert "prometheus.bearer_token: (secret) → null" in out
    run_platform("apply", platform_file("prune: true\n" + without))
    telemetry = ClusterTelemetry.objects.get(cluster__slug="eu-slurm")
    assert (telemetry.source, telemetry.prometheus, telemetry.prometheus_secrets()) == ("embedded", {}, {})


def test_a_pruned_cluster_takes_its_telemetry_with_it(platform_file, run_platform):
    run_platform("apply", platform_file(PLATFORM))
    status, out, _ = run_platform(
        "plan", platform_file("prune: true\ngpu_types:\n- {slug: h100, name: NVIDIA H100}\n")
    )
    assert status == 2 and "- cluster eu-slurm" in out and "telemetry" not in out
    run_platform("apply", platform_file("prune: true\ngpu_types:\n- {slug: h100, name: NVIDIA H100}\n"))
    assert not ClusterTelemetry.objects.exists()


CLUSTER = "clusters:\n- slug: c\n  name: C\n  kind: slurm\n  telemetry:\n"


@pytest.mark.parametrize(
    ("telemetry", "path", "message"),
    [
        (
            "    prometheus: {url: https://prom, bearer_token: inline}\n",
            "clusters[0].telemetry.prometheus.bearer_token",
            "A secret is never written inline",
        ),
        (
            "    source: prometheus\n",
            "clusters[0].telemetry.prometheus",
            "Connection setting 'url' is required.",
        ),
        (
            "    prometheus: {url: 'https://u:p@prom'}\n",
            "clusters[0].telemetry.prometheus",
            "takes no credentials",
        ),
        ("    prometheus: {url: https://prom, color: red}\n", "clusters[0].telemetry.prometheus", "color"),
        ("    source: graphite\n", "clusters[0].telemetry.source", "Input should be"),
        ("    interval_seconds: 0\n", "clusters[0].telemetry.interval_seconds", "greater than or equal to 1"),
        (
            "    prometheus: {url: https://prom, password: {env: NOT_SET_ANYWHERE}}\n",
            "clusters[0].telemetry.prometheus.password",
            "The environment variable NOT_SET_ANYWHERE is not set.",
        ),
    ],
)
def test_bad_sources_are_refused_with_their_paths_and_change_nothing(telemetry, path, message):
    found = problems(CLUSTER + telemetry)
    assert message in found.get(path, ""), found
    assert not Cluster.objects.exists() and not ClusterTelemetry.objects.exists()


def test_the_schema_knows_the_prometheus_settings_and_its_secrets(client):
    from platform_config.schema import json_schema

    telemetry = json_schema()["$defs"]["TelemetrySpec"]["properties"]
    assert telemetry["source"]["enum"] == ["embedded", "prometheus"]
    prometheus = telemetry["prometheus"]["properties"]
    assert prometheus["bearer_token"] == {"$ref": "#/$defs/SecretRef"}
    assert prometheus["password"] == {"$ref": "#/$defs/SecretRef"}
    assert prometheus["url"]["type"] == "string"


def test_a_plan_over_http_reads_no_token_from_the_server(platform_admin):
    response = client_for(platform_admin).post(
        "/api/v1/platform/plan/", PLATFORM, content_type="application/yaml"
    )
    assert response.status_code == 200, response.content
    assert TOKEN not in response.content.decode()
    assert not Cluster.objects.exists()
