"""The artifacts a site deploys with: the Helm chart rendered by a real helm (scripts/install-helm)
and every manifest checked against the Kubernetes API schemas (kubernetes-validate, strict); the
Dockerfile linted by hadolint; compose.yaml read by a strict Compose Specification parser; the
proxy's configuration checked by nginx itself. No image can be built here (no registry is
reachable), so what they run is tested elsewhere: the same servers, configuration and commands
in tests/integration/ and tests/factory/test_startup.py."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from compose_spec import PyCompose

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "factory"
HELM = ROOT / ".venv" / "bin" / "helm"
HADOLINT = Path(sys.executable).parent / "hadolint"
QUEUES = [
    "dispatch-slurm",
    "dispatch-kubernetes",
    "dispatch-ray",
    "dispatch-local",
    "admission",
    "metering",
    "notifications",
    "default",
]
KUBERNETES = kubernetes_validate.latest_version()


def helm(*args: str) -> subprocess.CompletedProcess:
    assert HELM.exists(), "helm is missing: bash scripts/install-helm"
    return subprocess.run([str(HELM), *args], capture_output=True, text=True, timeout=60)


def render(*values: str) -> list[dict]:
    sets = [arg for value in values for arg in ("--set", value)]
    result = helm("template", "site", str(CHART), "--namespace", "factory", *sets)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def manifests() -> list[dict]:
    return render()


def named(manifests: list[dict], kind: str) -> dict[str, dict]:
    return {m["metadata"]["name"]: m for m in manifests if m["kind"] == kind}


def test_every_rendered_manifest_is_valid_kubernetes(manifests):
    assert helm("lint", "--strict", str(CHART)).returncode == 0
    for manifest in manifests:
        kubernetes_validate.validate(manifest, KUBERNETES, strict=True)
    # The validator is strict: a misspelt field is caught.
    broken = json.loads(json.dumps(named(manifests, "Deployment")["site-factory-web"]))
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)


def test_the_chart_runs_every_process_of_the_topology(manifests):
    deployments = named(manifests, "Deployment")
    workers = {f"site-factory-worker-{queue}" for queue in QUEUES}
    expected = {"site-factory-web", "site-factory-events", "site-factory-proxy", *workers}
    assert set(deployments) == expected | {"site-factory-beat", "site-factory-beat-standby"}
    for name in workers:
        container = deployments[name]["spec"]["template"]["spec"]["containers"][0]
        queue = name.removeprefix("site-factory-worker-")
        assert {"name": "FACTORY_QUEUE", "value": queue} in container["env"]
        assert "inspect ping" in " ".join(container["livenessProbe"]["exec"]["command"])
        assert "replicas" not in deployments[name]["spec"]  # the autoscaler's
    hpas = named(manifests, "HorizontalPodAutoscaler")
    assert {h["spec"]["scaleTargetRef"]["name"] for h in hpas.values()} == workers
    for web in ("site-factory-web", "site-factory-events"):
        container = deployments[web]["spec"]["template"]["spec"]["containers"][0]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    web = deployments["site-factory-web"]["spec"]["template"]["spec"]["containers"][0]
    assert web["command"] == ["gunicorn", "-c", "deploy/gunicorn.conf.py"]
    events = deployments["site-factory-events"]["spec"]["template"]["spec"]["containers"][0]
    assert events["command"][:2] == ["uvicorn", "factory.asgi:application"]
    pdbs = named(manifests, "PodDisruptionBudget")
    assert {"site-factory-web", "site-factory-events", "site-factory-proxy"} <= set(pdbs)
    assert workers <= set(pdbs)


def test_one_scheduler_and_its_standby_never_overlap_with_themselves(manifests):
    deployments = named(manifests, "Deployment")
    for name in ("site-factory-beat", "site-factory-beat-standby"):
        spec = deployments[name]["spec"]
        assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
        assert spec["template"]["spec"]["containers"][0]["command"][:4] == ["celery", "-A", "factory", "beat"]


def test_migrations_run_first_as_a_hook(manifests):
    (job,) = named(manifests, "Job").values()
    hooks = job["metadata"]["annotations"]["helm.sh/hook"].split(",")
    assert {"pre-install", "pre-upgrade"} <= set(hooks)
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == [
        "python",
        "manage.py",
        "migrate",
        "--noinput",
    ]


def test_secrets_come_from_the_sites_own_secret(manifests):
    assert not [m for m in manifests if m["kind"] == "Secret"]
    text = yaml.safe_dump_all(manifests)
    assert "SECRET_KEY" in text and "secretKeyRef" in text
    for deployment in named(manifests, "Deployment").values():
        pod = deployment["spec"]["template"]["spec"]
        for container in pod["containers"]:
            for var in container.get("env", []):
                if var["name"] in ("SECRET_KEY", "DATABASE_URL", "REDIS_URL"):
                    assert var["valueFrom"]["secretKeyRef"]["name"] == "factory"
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
    assert render("existingSecret=site-secrets")
    failed = helm("template", "site", str(CHART), "--set", "existingSecret=")
    assert failed.returncode != 0 and "existingSecret" in failed.stderr


# --- the Dockerfile ---------------------------------------------------------------------------


def stages(dockerfile: str) -> dict[str, list[str]]:
    """Instructions per stage (continuation lines joined)."""
    text = re.sub(r"\\\n", " ", dockerfile)
    result: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if match := re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.IGNORECASE):
            current = match.group(1)
            result[current] = []
        result[current].append(line)
    return result


def test_the_dockerfile_passes_hadolint_and_keeps_compilers_out_of_the_image():
    result = subprocess.run(
        [str(HADOLINT), "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    parts = stages((ROOT / "Dockerfile").read_text())
    assert list(parts) == ["build", "proxy", "portal"]  # the portal image is the default (last)
    build, portal, proxy = "\n".join(parts["build"]), "\n".join(parts["portal"]), "\n".join(parts["proxy"])
    assert "build-essential" in build and "collectstatic" in build
    assert "build-essential" not in portal and "apt-get" not in portal and "gcc" not in portal
    assert "COPY --from=build /opt/venv /opt/venv" in portal
    # Unprivileged, by number: the pod's runAsNonRoot can verify it.
    for stage in (portal, proxy):
        user = re.findall(r"^USER\s+(\S+)", stage, re.MULTILINE)[-1]
        assert re.fullmatch(r"[1-9]\d*(:\d+)?", user), user
    assert "nginx-light" in proxy and "factory.conf.template" in proxy
    assert "tests" not in portal  # the tests stay out of the image


# --- compose.yaml -----------------------------------------------------------------------------


def interpolate(text: str, environ: dict[str, str]) -> str:
    """Compose's variable interpolation: ${VAR}, ${VAR:-default}, $$ for a literal $."""

    def value(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(3)
        return environ.get(name) or (default if default is not None else "")

    return re.sub(r"\$\$|\$\{(\w+)(:-([^}]*))?\}", value, text)


@pytest.fixture(scope="module")
def compose() -> dict:
    data = yaml.safe_load(interpolate((ROOT / "compose.yaml").read_text(), {}))  # YAML merge keys resolved
    return PyCompose.from_json(json.dumps(data)).to_dict()


def test_compose_is_a_valid_compose_file_with_the_whole_topology(compose):
    services = compose["services"]
    workers = {f"worker-{queue}" for queue in QUEUES}
    expected = {"proxy", "web", "events", "beat", "beat-standby", "migrate", "postgres", "redis", *workers}
    assert set(services) == expected
    for name in workers:
        assert services[name]["environment"]["FACTORY_QUEUE"] == name.removeprefix("worker-")
        assert '-Q "$FACTORY_QUEUE"' in services[name]["command"][-1]
    for name, service in services.items():
        if name != "migrate":
            assert "healthcheck" in service, name
    assert services["migrate"]["command"] == ["python", "manage.py", "migrate", "--noinput"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("web", "events", "beat", "beat-standby", *workers):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["redis"]["condition"] == "service_healthy", name
    assert {d["condition"] for d in services["proxy"]["depends_on"].values()} == {"service_healthy"}
    assert services["web"]["command"] == ["gunicorn", "-c", "deploy/gunicorn.conf.py"]
    assert services["events"]["command"][:2] == ["uvicorn", "factory.asgi:application"]
    # Only the proxy is published; secrets come from files, none is written in the file.
    assert [name for name, s in services.items() if s.get("ports")] == ["proxy"]
    assert services["web"]["environment"]["SECRET_KEY_FILE"] == "/run/secrets/secret_key"
    assert "SECRET_KEY" not in services["web"]["environment"]


def test_a_misspelt_compose_key_is_caught():
    data = yaml.safe_load(interpolate((ROOT / "compose.yaml").read_text(), {}))
    data["services"]["web"]["healthchek"] = data["services"]["web"].pop("healthcheck")
    with pytest.raises(ValueError, match="healthchek"):
        PyCompose.from_json(json.dumps(data))


# --- the proxy's configuration ----------------------------------------------------------------


@pytest.mark.skipif(not shutil.which("nginx") and not os.path.exists("/usr/sbin/nginx"), reason="no nginx")
def test_nginx_accepts_the_rendered_template(tmp_path):
    from bench.support.topology import NGINX, nginx_main_conf, render_proxy_conf

    conf = render_proxy_conf("127.0.0.1:1", ["127.0.0.1:2", "127.0.0.1:3"], ["127.0.0.1:4"], "1m")
    assert "${" not in conf and "$http_host" in conf and "$remote_addr" in conf
    (tmp_path / "factory.conf").write_text(conf)
    (tmp_path / "nginx.conf").write_text(nginx_main_conf(tmp_path))
    result = subprocess.run(
        [
            NGINX,
            "-t",
            "-p",
            str(tmp_path),
            "-c",
            str(tmp_path / "nginx.conf"),
            "-e",
            str(tmp_path / "error.log"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    stream = conf[conf.index("location ~ ^/jobs/") :]
    assert "proxy_buffering off;" in stream and "proxy_read_timeout 1h;" in stream
