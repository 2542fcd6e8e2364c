from __future__ import annotations

import json
from datetime import date

import jsonschema
import pytest

from billing.models import RateCard
from factory.models import Tenant
from platform_config import loading
from quotas.models import Quota
from tests.jobs.test_api import client_for

pytestmark = pytest.mark.django_db

FILE = """
gpu_types:
- {slug: h100, name: H100}
tenants:
- slug: vision
  name: Vision
  quotas:
    h100: {nominal: 8}
"""


def test_platform_admin_plans_a_yaml_file(platform_admin):
    response = client_for(platform_admin).post(
        "/api/v1/platform/plan/", FILE, content_type="application/yaml"
    )
    assert response.status_code == 200, response.content
    data = response.json()
    assert data["has_changes"] is True
    assert data["summary"] == {"create": 3, "change": 0, "delete": 0}
    quota = next(c for c in data["changes"] if c["kind"] == "quota")
    assert quota["key"] == "vision/h100"
    assert {"field": "nominal", "old": None, "new": 8} in quota["fields"]
    assert not Tenant.objects.exists()


def test_a_plan_of_a_json_body_and_its_problems_by_path(platform_admin):
    api = client_for(platform_admin)
    body = {"tenants": [{"slug": "vision", "name": "Vision", "quotas": {"h100": {"nominal": "8"}}}]}
    response = api.post("/api/v1/platform/plan/", body, format="json")
    assert response.status_code == 400
    assert response.json() == {"tenants[0].quotas.h100.nominal": ["Input should be a valid integer."]}
    body["tenants"][0]["quotas"]["h100"]["nominal"] = 8
    response = api.post("/api/v1/platform/plan/", body, format="json")
    assert response.json() == {"tenants[0].quotas.h100": ["No GPU type 'h100' is declared or exists."]}


def test_broken_yaml_is_a_400(platform_admin):
    response = client_for(platform_admin).post(
        "/api/v1/platform/plan/", "tenants: [", content_type="application/yaml"
    )
    assert response.status_code == 400
    assert "Not valid YAML" in response.json()["detail"]


def test_only_platform_admins_plan(owner, tenant_admin, client):
    for user in (owner, tenant_admin):
        response = client_for(user).post("/api/v1/platform/plan/", FILE, content_type="application/yaml")
        assert response.status_code == 403
    assert client.post("/api/v1/platform/plan/", FILE, content_type="application/yaml").status_code == 401


def test_the_json_schema_is_published_and_matches_the_command(client, run_platform):
    response = client.get("/api/v1/platform/schema/")
    assert response.status_code == 200
    schema = response.json()
    assert schema["title"] == "Platform file"
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) >= {"gpu_types", "clusters", "tenants", "rate_cards", "prune"}
    quota = schema["$defs"]["QuotaSpec"]
    assert quota["properties"]["nominal"]["minimum"] == 0
    _, out, _ = run_platform("schema")
    assert json.loads(out) == schema


def test_the_schema_validates_an_exported_file_and_refuses_a_typo(cluster, tenant, h100, run_platform):
    """An editor's validator (jsonschema, as editors use) accepts what export writes."""
    RateCard.objects.create(
        gpu_type=h100, currency="EUR", price_per_gpu_hour=2, effective_from=date(2026, 1, 1)
    )
    Quota.objects.create(tenant=tenant, gpu_type=h100, nominal=2)
    _, schema, _ = run_platform("schema")
    _, exported, _ = run_platform("export")
    document = loading.parse_yaml(exported)
    jsonschema.validate(document, json.loads(schema))
    document["tenants"][0]["quotas"]["h100"]["nominall"] = 3
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, json.loads(schema))


def test_a_plan_over_http_reads_no_server_environment_or_file(platform_admin, monkeypatch):
    """A secret reference is the applying shell's to read: over HTTP the portal's own environment
    (its SECRET_KEY, say) and files stay unread."""
    monkeypatch.setenv("SERVER_ONLY", "line one\nline two")  # Ray would refuse it if it were read
    file = (
        "clusters:\n- slug: ray\n  name: Ray\n  kind: ray\n  connection:\n"
        "    address: http://ray:8265\n    token: {env: SERVER_ONLY}\n"
        "    headers: {file: /etc/shadow}\n"
    )
    response = client_for(platform_admin).post(
        "/api/v1/platform/plan/", file, content_type="application/yaml"
    )
    assert response.status_code == 200, response.content
    (cluster,) = response.json()["changes"]
    secrets = {
        f["field"]: f["new"]
        for f in cluster["fields"]
        if f["field"] in ("connection.token", "connection.headers")
    }
    assert secrets == {"connection.token": "(secret)", "connection.headers": "(secret)"}


def test_an_inline_secret_mapping_is_refused(platform_admin):
    file = (
        "clusters:\n- slug: ray\n  name: Ray\n  kind: ray\n  connection:\n"
        "    address: http://ray:8265\n    headers: {Authorization: Bearer abc}\n"
    )
    response = client_for(platform_admin).post(
        "/api/v1/platform/plan/", file, content_type="application/yaml"
    )
    assert response.status_code == 400
    assert response.json()["clusters[0].connection.headers"][0].startswith("A secret is never written inline")


def test_the_schema_knows_each_cluster_kinds_connection_settings_and_its_secrets(client):
    validator = jsonschema.Draft202012Validator(client.get("/api/v1/platform/schema/").json())
    document = loading.parse_yaml(
        "clusters:\n"
        "- {slug: r, name: R, kind: ray, connection: {address: 'http://x', token: abc}}\n"
        "- {slug: s, name: S, kind: slurm, connection: {partition: gpu}}\n"
        "- {slug: k, name: K, kind: kubernetes, connection: {kubeconfig: {env: KC}, namespace_prefix: x-}}\n"
    )
    errors = {tuple(e.absolute_path): e.message for e in validator.iter_errors(document)}
    assert errors == {
        ("clusters", 0, "connection", "token"): "'abc' is not of type 'object'",
        ("clusters", 1, "connection"): "Additional properties are not allowed ('partition' was unexpected)",
    }
