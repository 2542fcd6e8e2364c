"""A cluster's telemetry source as a setting: its checks, its write-only credentials (sealed at
rest), the API and admin that change it, and the PromQL client's TLS, basic auth and quoting
against a real Prometheus (Debian's, behind its own TLS and basic auth)."""

from __future__ import annotations

import datetime
import ipaddress
import json
import re
import threading
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleet.choices import TelemetrySource
from fleet.devprometheus import LocalPrometheus, config_text
from fleet.models import ClusterTelemetry
from fleet.promql import PrometheusUnavailable, any_of, string
from fleet.sources.prometheus import PrometheusSettings
from tests.jobs.test_api import client_for

pytestmark = pytest.mark.django_db

TOKEN = "tok-9f8e7d6c5b4a"


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({}, "Connection setting 'url' is required."),
        ({"url": "ftp://prom"}, "'url' must be an http:// or https:// URL."),
        ({"url": "https://me:pw@prom"}, "'url' takes no credentials, query or fragment."),
        ({"url": "https://prom", "match": {"__name__": "x"}}, "'match': '__name__' is not a label name."),
        ({"url": "https://prom", "match": {"job": "a\nb"}}, "the value of 'job' must be one line."),
        ({"url": "https://prom", "match": {"job": 5}}, "Connection setting 'match' has the wrong type."),
        ({"url": "https://prom", "timeout": "5"}, "Connection setting 'timeout' has the wrong type."),
        ({"url": "https://prom", "timeout": 0}, "'timeout' must be more than 0 and at most 120 seconds."),
        ({"url": "https://prom", "username": "u"}, "'username' and 'password' go together."),
        ({"url": "https://prom", "bearer_token": "t", "username": "u", "password": "p"}, "not both"),
        ({"url": "https://prom", "ca_file": "ca.pem"}, "'ca_file' must be an absolute path."),
        ({"url": "https://prom", "ca_file": "/ca.pem", "verify_tls": False}, "which 'verify_tls' turns off"),
        ({"url": "https://prom", "node_label": "host name"}, "'node_label' must be a label name."),
        ({"url": "https://prom", "token": "t"}, "Unknown connection setting(s): token."),
    ],
)
def test_bad_prometheus_settings_are_refused_with_the_setting_named(given, message):
    with pytest.raises(ValueError, match=re.escape(message)) as refused:
        PrometheusSettings.parse(given)
    assert TOKEN not in str(refused.value)


def test_credentials_are_sealed_at_rest_write_only_and_kept_until_removed(cluster):
    telemetry = ClusterTelemetry.of(cluster)
    telemetry.source = TelemetrySource.PROMETHEUS
    telemetry.set_prometheus({"url": "https://prom.example.org", "bearer_token": TOKEN, "timeout": 4})
    telemetry.save()
    stored = ClusterTelemetry.objects.filter(pk=telemetry.pk).values().get()
    assert TOKEN not in json.dumps(stored, default=str)
    assert stored["prometheus"] == {"url": "https://prom.example.org", "timeout": 4}
    telemetry.refresh_from_db()
    assert telemetry.prometheus_settings().bearer_token == TOKEN
    assert TOKEN not in repr(telemetry.prometheus_settings())
    telemetry.set_prometheus({"url": "https://other.example.org"})  # left out: kept
    assert telemetry.prometheus_settings().bearer_token == TOKEN
    telemetry.set_prometheus({"url": "https://other.example.org", "bearer_token": None})
    assert telemetry.prometheus_settings().bearer_token is None and telemetry.prometheus_secrets() == {}
    with pytest.raises(ValueError, match="go together"):
        telemetry.set_prometheus({"url": "https://other.example.org", "password": "pw"})
    assert telemetry.prometheus_secrets() == {}  # a refused change changes nothing


def test_only_platform_admins_see_and_change_the_source_and_credentials_never_come_back(
    cluster, owner, platform_admin
):
    assert client_for(owner).get("/api/v1/clusters/local/telemetry/").status_code == 404
    api = client_for(platform_admin)
    assert api.get("/api/v1/clusters/nope/telemetry/").status_code == 404
    shown = api.get("/api/v1/clusters/local/telemetry/").json()
    assert shown["source"] == "embedded" and shown["prometheus"] == {}
    settings = {"url": "https://prom.example.org", "match": {"job": "dcgm"}, "bearer_token": TOKEN}
    changed = api.patch(
        "/api/v1/clusters/local/telemetry/", {"source": "prometheus", "prometheus": settings}, format="json"
    )
    assert changed.status_code == 200, changed.content
    assert TOKEN not in changed.content.decode()
    assert changed.json()["prometheus"] == {"url": "https://prom.example.org", "match": {"job": "dcgm"}}
    assert changed.json()["prometheus_credentials"] == ["bearer_token"]
    again = api.patch("/api/v1/clusters/local/telemetry/", {"interval_seconds": 15}, format="json")
    assert again.status_code == 200 and again.json()["prometheus_credentials"] == ["bearer_token"]
    assert ClusterTelemetry.objects.get(cluster=cluster).prometheus_settings().bearer_token == TOKEN


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"source": "prometheus"}, "prometheus"),  # no settings yet
        ({"source": "prometheus", "prometheus": {"url": "https://u:p@prom"}}, "prometheus"),
        ({"source": "prometheus", "prometheus": ["https://prom"]}, "prometheus"),
        ({"source": "graphite"}, "source"),
        ({"interval_seconds": 0}, "interval_seconds"),
        ({"unavailable_reason": "x", "prometheus_secret": 1}, "prometheus_secret"),
    ],
)
def test_bad_source_changes_are_refused_per_field_and_change_nothing(cluster, platform_admin, body, field):
    response = client_for(platform_admin).patch("/api/v1/clusters/local/telemetry/", body, format="json")
    assert response.status_code == 400 and field in response.json(), response.content
    assert not ClusterTelemetry.objects.filter(cluster=cluster).exists()


def test_the_admin_never_shows_the_credentials_and_keeps_them_when_left_out(client, cluster, platform_admin):
    platform_admin.is_superuser = True
    platform_admin.save()
    telemetry = ClusterTelemetry.of(cluster)
    telemetry.set_prometheus({"url": "https://prom.example.org", "username": "portal", "password": TOKEN})
    telemetry.source = TelemetrySource.PROMETHEUS
    telemetry.save()
    client.force_login(platform_admin)
    url = f"/admin/fleet/clustertelemetry/{telemetry.pk}/change/"
    page = client.get(url).content.decode()
    assert TOKEN not in page and "Stored: password." in page and "prom.example.org" in page
    posted = client.post(
        url,
        {
            "cluster": cluster.pk,
            "enabled": "on",
            "interval_seconds": "",
            "source": "prometheus",
            "prometheus_settings": json.dumps({"url": "https://prom2.example.org", "username": "portal"}),
        },
    )
    assert posted.status_code == 302, posted.content.decode()[-3000:]
    telemetry.refresh_from_db()
    assert telemetry.prometheus_settings().url == "https://prom2.example.org"
    assert telemetry.prometheus_settings().password == TOKEN


# --- the client against a real Prometheus behind TLS and basic auth -----------------------------


def _certificate(directory):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return directory / "cert.pem", directory / "key.pem"


def _bcrypt(password: str) -> str:
    with warnings.catch_warnings():  # crypt is the standard library's way to libxcrypt's bcrypt
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt

    return crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=1 << 5))


@pytest.fixture(scope="module")
def guarded_prometheus(tmp_path_factory):
    """A Prometheus that answers only over TLS and to portal:<TOKEN> (its web config)."""
    directory = tmp_path_factory.mktemp("prometheus-tls")
    cert, key = _certificate(directory)
    web = directory / "web.yml"
    web.write_text(
        json.dumps(
            {
                "tls_server_config": {"cert_file": str(cert), "key_file": str(key)},
                "basic_auth_users": {"portal": _bcrypt(TOKEN)},
            }
        )
    )
    server = LocalPrometheus(config_text(), web_config=web)
    server.url = server.url.replace("http://", "https://")
    server.wait_ready(verify=str(cert), auth=("portal", TOKEN))
    yield server, str(cert)
    server.stop()


def test_the_client_speaks_tls_and_basic_auth_and_says_why_it_cannot(guarded_prometheus):
    server, ca = guarded_prometheus
    settings = {"url": server.url, "username": "portal", "password": TOKEN, "ca_file": ca}
    assert [s.value for s in PrometheusSettings.parse(settings).client().query("vector(7)")] == [7.0]
    unverified = {**settings, "verify_tls": False}
    del unverified["ca_file"]
    with warnings.catch_warnings():  # urllib3 warns of what verify_tls false asks for
        warnings.simplefilter("ignore")
        assert PrometheusSettings.parse(unverified).client().query("vector(1)")[0].value == 1.0
    without_ca = {k: v for k, v in settings.items() if k != "ca_file"}
    with pytest.raises(PrometheusUnavailable, match="TLS failed: certificate verify failed"):
        PrometheusSettings.parse(without_ca).client().query("vector(1)")
    wrong = {**settings, "password": "not-it"}
    with pytest.raises(PrometheusUnavailable, match=r"^HTTP 401"):
        PrometheusSettings.parse(wrong).client().query("vector(1)")
    client = PrometheusSettings.parse(settings).client()
    with pytest.raises(PrometheusUnavailable, match=r"^HTTP 400: bad_data: .*parse error"):
        client.query("sum(")


def test_label_values_and_literal_regexes_reach_prometheus_as_they_are(guarded_prometheus):
    server, ca = guarded_prometheus
    client = PrometheusSettings.parse(
        {"url": server.url, "username": "portal", "password": TOKEN, "ca_file": ca}
    ).client()
    value = 'a "quoted" \\ back\\slash, a.dot|pipe(paren)*star+ ünïcödé \t tab 🙂'
    made = f'label_replace(vector(1), "v", {string(value)}, "", "")'
    [sample] = client.query(made)
    assert sample.labels["v"] == value
    # A regular expression of literal values matches each of them whole, and nothing else.
    [hit] = client.query(f'label_replace({made}, "w", "yes", "v", {string(any_of([value, "x.y"]))})')
    assert hit.labels.get("w") == "yes"
    other = 'label_replace(vector(1), "v", "xzy", "", "")'
    [miss] = client.query(f'label_replace({other}, "w", "yes", "v", {string(any_of(["x.y"]))})')
    assert "w" not in miss.labels


class _Recorder(BaseHTTPRequestHandler):
    seen: list[dict] = []

    def log_message(self, format, *args) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        _Recorder.seen.append(dict(self.headers))
        if self.path.startswith("/moved"):
            self.send_response(307)
            self.send_header("Location", "http://127.0.0.1:9/api/v1/query")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": []}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_a_bearer_token_goes_to_prometheus_and_never_follows_a_redirect():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        PrometheusSettings.parse({"url": base, "bearer_token": TOKEN}).client().query("up")
        assert _Recorder.seen[-1]["Authorization"] == f"Bearer {TOKEN}"
        moved = PrometheusSettings.parse({"url": f"{base}/moved", "bearer_token": TOKEN}).client()
        with pytest.raises(PrometheusUnavailable, match="HTTP 307: a redirect") as refused:
            moved.query("up")
        assert TOKEN not in str(refused.value)
    finally:
        server.shutdown()
        server.server_close()


def test_source_changes_are_in_the_audit_trail_by_whoever_made_them_credentials_never(
    cluster, platform_admin
):
    from tests.support import trail

    api = client_for(platform_admin)
    settings = {"url": "https://prom.example.org", "bearer_token": TOKEN}
    body = {"source": "prometheus", "prometheus": settings}
    assert api.patch("/api/v1/clusters/local/telemetry/", body, format="json").status_code == 200
    rotated = {"url": "https://prom.example.org", "bearer_token": "rotated-" + TOKEN}
    assert (
        api.patch("/api/v1/clusters/local/telemetry/", {"prometheus": rotated}, format="json").status_code
        == 200
    )
    first, rotation = (entry.changes for entry in trail(ClusterTelemetry, actor=platform_admin))
    assert first["source"][1] == "prometheus"  # the first change creates the settings
    assert "https://prom.example.org" in str(first["prometheus"][1])
    assert rotation == {"prometheus_secrets_sealed": ["(secret)", "(secret)"]}  # only that it changed
    assert TOKEN not in str([first, rotation])


def test_the_fleet_by_api_gpus_with_their_health_and_the_hardwares_history(
    simulator, cluster, owner, platform_admin, auditor
):
    """What automation asks of the fleet (an RMA tool, a site's dashboards): each cluster's GPUs
    with their health, filtered; and the health history. Platform admins and auditors read it; to
    anyone else it does not exist."""
    from fleet.scrape import scrape_cluster
    from fleet.simulator import gpu_uuid
    from tests.fleet.test_telemetry import inject

    scrape_cluster(cluster)
    inject(simulator, "local-h100", "xid79", 3)
    scrape_cluster(cluster)
    assert client_for(owner).get("/api/v1/clusters/local/gpus/").status_code == 404
    assert client_for(owner).get("/api/v1/clusters/local/health-events/").status_code == 404
    api = client_for(auditor)
    assert api.get("/api/v1/clusters/nope/gpus/").status_code == 404
    everything = api.get("/api/v1/clusters/local/gpus/").json()["results"]
    assert len(everything) == 8
    failed = api.get("/api/v1/clusters/local/gpus/?health=failed").json()["results"]
    assert [(g["node"], g["index"], g["uuid"], g["health"], g["drained_by_portal"]) for g in failed] == [
        ("local-h100", 3, gpu_uuid("local-h100", 3), "failed", True)
    ]
    assert failed[0]["health_reason"] == "XID 79 (GPU has fallen off the bus) on GPU 3"
    assert {"temperature_c", "power_w", "utilisation_pct", "memory_used_mib", "sampled_at", "job"} <= set(
        failed[0]
    )
    assert (
        api.get("/api/v1/clusters/local/gpus/?node=local-a100").json()["results"][0]["node"] == "local-a100"
    )
    events = api.get(f"/api/v1/clusters/local/health-events/?gpu_uuid={gpu_uuid('local-h100', 3)}").json()[
        "results"
    ]
    assert [(e["kind"], e["health"], e["node"], e["gpu_index"]) for e in events] == [
        ("drained", "", "local-h100", 3),
        ("health", "failed", "local-h100", 3),
    ]
    assert api.get("/api/v1/clusters/local/health-events/?kind=resumed").json()["results"] == []
    bad = api.get("/api/v1/clusters/local/gpus/?health=purple")
    assert bad.status_code == 400 and "health" in bad.json()
    assert client_for(platform_admin).post("/api/v1/clusters/local/gpus/", {}).status_code == 405
