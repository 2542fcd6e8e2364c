"""The portal deployed on several hosts, under host failures: nothing lost, nothing run twice.

    scripts/multihost-test [--jobs 500] [--submitters 6]     (as root; `make test-multihost`)

Hosts are network namespaces on this machine (`ip netns`), each with its own address on a private
bridge made for the run (10.231.0.0/24, removed afterwards) and its own var/ directory:
- db (.2): a PostgreSQL of its own (initdb in the run's directory) and a Redis;
- proxy (.3): nginx, balancing pages and the API over web1 and web2, and sending job streams
  to the events host (no buffering, long read timeouts);
- web1, web2 (.11, .12): gunicorn (deploy/gunicorn.conf.py), pages and the API; events (.13):
  uvicorn (factory.asgi), the job streams;
- worker1, worker2 (.21, .22): a Celery worker per queue the deployment uses;
- beat1, beat2 (.31, .32): a scheduler each; one acts, the other stands by (celery-redbeat).
The jobs go to the real Slurm of scripts/slurm-dev-cluster, reached over the bridge at the root
namespace's address (.1): each worker host sees a slurm.conf naming the controller and slurmdbd
there (`/etc/netns/<host>/slurm`, which `ip netns exec` puts over /etc/slurm). The Slurm jobs'
directories are the shared storage every worker host and compute node reaches.

The run submits --jobs jobs through the proxy (API tokens, an Idempotency-Key each, retried with the
same key until answered), follows a few of them on their live streams through the proxy (signed in,
reconnecting with Last-Event-ID), and once a third of the jobs have ended kills (SIGKILL, every
process of the host) web1, worker1 and the active beat. Each job appends its uid to a run file.
Then it waits for every job to end and checks:
- lost: jobs not ended, or not succeeded, or succeeded without a line in the run file, plus
  submissions that never got a job;
- ran_twice: jobs whose uid is in the run file more than once or that entered `running` twice;
- beat_takeover_s: from the kill of the active beat to the standby's taking the lock;
- streams_ok: every followed stream reconnected with Last-Event-ID, got nothing from before the
  point it resumed from, and saw its job end;
- jobs_per_s: jobs ended per second, from the first submission to the last job's end.
The last line printed is one JSON object: hosts, jobs, lost, ran_twice, beat_takeover_s,
jobs_per_s (and the details).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PREFIX = "aifmh"
NET = "10.231.0"
BRIDGE = f"{PREFIX}0"
HOSTS = {
    "db": 2,
    "proxy": 3,
    "web1": 11,
    "web2": 12,
    "events": 13,
    "worker1": 21,
    "worker2": 22,
    "beat1": 31,
    "beat2": 32,
}
GATEWAY = f"{NET}.1"  # the root namespace: the Slurm controller's host
WEB_PORT, PROXY_PORT, PG_PORT, REDIS_PORT = 8000, 8080, 5432, 6379
# The queues this deployment uses (no local, Kubernetes or Ray clusters), a worker each per host.
WORKER_QUEUES = {"dispatch-slurm": 3, "admission": 1, "metering": 1, "notifications": 1, "default": 1}
POSIX_USER = "aif-alice"
TENANT = "aifmh-lab"  # also its Slurm account, removed afterwards
PASSWORD = "multihost-" + uuid.uuid4().hex
REDIS_PASSWORD = uuid.uuid4().hex  # Redis refuses other hosts without one
STARTED = time.monotonic()


def log(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:7.1f}s] {message}", file=sys.stderr, flush=True)


def ip(host: str) -> str:
    return f"{NET}.{HOSTS[host]}"


def ns(host: str) -> str:
    return f"{PREFIX}-{host}"


def run(*command: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(command, check=check, capture_output=True, text=True)


# --- the network ---------------------------------------------------------------------------------


def make_network() -> None:
    teardown_network()
    run("ip", "link", "add", BRIDGE, "type", "bridge")
    run("ip", "addr", "add", f"{GATEWAY}/24", "dev", BRIDGE)
    run("ip", "link", "set", BRIDGE, "up")
    for host, octet in HOSTS.items():
        name, veth = ns(host), f"{PREFIX}-{octet}"
        run("ip", "netns", "add", name)
        run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", name)
        run("ip", "link", "set", veth, "master", BRIDGE)
        run("ip", "link", "set", veth, "up")
        run("ip", "-n", name, "addr", "add", f"{NET}.{octet}/24", "dev", "eth0")
        run("ip", "-n", name, "link", "set", "eth0", "up")
        run("ip", "-n", name, "link", "set", "lo", "up")


def teardown_network() -> None:
    for host in HOSTS:
        kill_host(host)
    for host in HOSTS:
        with contextlib.suppress(RuntimeError):
            wait_for(lambda h=host: not host_pids(h), 30, f"the processes of {host} to end")
        run("ip", "netns", "del", ns(host), check=False)
        # The namespace's end takes its veth with it, a while later: not waited for.
        run("ip", "link", "del", f"{PREFIX}-{HOSTS[host]}", check=False)
        shutil.rmtree(Path("/etc/netns") / ns(host), ignore_errors=True)
    run("ip", "link", "del", BRIDGE, check=False)


def host_pids(host: str) -> list[int]:
    out = run("ip", "netns", "pids", ns(host), check=False).stdout
    return [int(pid) for pid in out.split()]


def kill_host(host: str) -> int:
    """SIGKILL every process of the host: a machine that lost its power."""
    pids = host_pids(host)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return len(pids)


def slurm_config_for_hosts(hosts: list[str]) -> None:
    """The worker hosts' /etc/slurm: the controller and slurmdbd at the root namespace's address."""
    conf = Path("/etc/slurm/slurm.conf").read_text()
    conf = re.sub(r"^SlurmctldHost=(\w+).*$", rf"SlurmctldHost=\1({GATEWAY})", conf, flags=re.M)
    conf = re.sub(r"^AccountingStorageHost=.*$", f"AccountingStorageHost={GATEWAY}", conf, flags=re.M)
    for host in hosts:
        etc = Path("/etc/netns") / ns(host) / "slurm"
        shutil.copytree("/etc/slurm", etc, ignore=shutil.ignore_patterns("slurmdbd.conf"))
        (etc / "slurm.conf").write_text(conf)


# --- the processes -------------------------------------------------------------------------------


class Process:
    def __init__(self, host: str, name: str, command: list[str], env: dict[str, str], log_dir: Path):
        self.host, self.name = host, name
        self.command = ["ip", "netns", "exec", ns(host), *command]
        self.env = env
        self.log_path = log_dir / f"{host}-{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Process:
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                self.command,
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")


def port_open(address: str, port: int) -> bool:
    import socket

    try:
        socket.create_connection((address, port), timeout=0.5).close()
        return True
    except OSError:
        return False


class Deployment:
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.logs = run_dir / "logs"
        self.logs.mkdir(parents=True)
        self.shared = run_dir / "shared"  # storage the worker hosts and compute nodes share
        self.shared.mkdir()
        self.shared.chmod(0o755)
        self.run_file = self.shared / "runs.txt"
        self.run_file.touch()
        self.run_file.chmod(0o666)
        self.processes: list[Process] = []

    def env(self, host: str) -> dict[str, str]:
        var = self.run_dir / "hosts" / host / "var"  # each host's own filesystem view of var/
        var.mkdir(parents=True, exist_ok=True)
        keep = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "HOME", "USER", "TZ")}
        return {
            **keep,
            "PYTHONUNBUFFERED": "1",
            "DJANGO_SETTINGS_MODULE": "factory.settings",
            "DATABASE_URL": f"postgresql://postgres@{ip('db')}:{PG_PORT}/factory",
            "REDIS_URL": f"redis://:{REDIS_PASSWORD}@{ip('db')}:{REDIS_PORT}/0",
            "SECRET_KEY": "multihost-only-not-a-secret-" + "x" * 40,
            "SECURE_SSL_REDIRECT": "0",
            "SESSION_COOKIE_SECURE": "0",
            "CSRF_COOKIE_SECURE": "0",
            "ALLOWED_HOSTS": ip("proxy"),
            "CSRF_TRUSTED_ORIGINS": f"http://{ip('proxy')}:{PROXY_PORT}",
            "FORWARDED_ALLOW_IPS": ip("proxy"),
            "FACTORY_VAR_DIR": str(var),
            "FACTORY_SLURM_JOB_ROOT": str(self.shared / "slurm-jobs"),
            # Recovery in seconds rather than minutes, as in bench/chaos.py.
            "FACTORY_SYNC_INTERVAL": "1",
            "FACTORY_DISPATCH_STALE_AFTER": "5",
            "FACTORY_DISPATCH_LEASE": "30",
            "FACTORY_BACKEND_TASK_TIME_LIMIT": "20",
            "FACTORY_TASK_KILL_GRACE": "5",
            "CELERY_VISIBILITY_TIMEOUT": "60",
            "FACTORY_METERING_INTERVAL": "5",
            "DB_POOL_MAX_SIZE": "4",
            "LOG_LEVEL": "INFO",
        }

    def add(self, host: str, name: str, command: list[str], env: dict[str, str] | None = None) -> Process:
        process = Process(host, name, command, env or self.env(host), self.logs).start()
        self.processes.append(process)
        return process

    # the db host

    def start_database(self) -> None:
        data = self.run_dir / "pg"
        data.mkdir()
        shutil.chown(data, "postgres", "postgres")
        data.chmod(0o700)
        as_postgres = ["sudo", "-u", "postgres", "--"]
        run(*as_postgres, "initdb", "-D", str(data), "-A", "trust", "-U", "postgres")
        with (data / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {NET}.0/24 trust\n")
        self.add(
            "db",
            "postgres",
            [
                *as_postgres,
                "postgres",
                "-D",
                str(data),
                "-c",
                f"listen_addresses={ip('db')}",
                "-c",
                f"unix_socket_directories={data}",
                "-c",
                "max_connections=400",
                "-c",
                "fsync=off",
            ],
        )
        redis = ["redis-server", "--bind", ip("db"), "--port", str(REDIS_PORT), "--save", ""]
        redis += ["--requirepass", REDIS_PASSWORD]
        self.add("db", "redis", [*redis, "--appendonly", "no"])
        wait_for(lambda: port_open(ip("db"), PG_PORT), 60, "PostgreSQL")
        wait_for(lambda: port_open(ip("db"), REDIS_PORT), 30, "Redis")
        import psycopg

        with psycopg.connect(f"postgresql://postgres@{ip('db')}:{PG_PORT}/postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE factory")

    # the web tier

    def start_web(self) -> None:
        for host in ("web1", "web2", "events"):  # each web host's own static files, as an image has
            env = self.env(host)
            subprocess.run(
                [sys.executable, "manage.py", "collectstatic", "--noinput", "-v0"],
                cwd=ROOT,
                env=env,
                check=True,
            )
        gunicorn = [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "deploy" / "gunicorn.conf.py")]
        for host in ("web1", "web2"):
            self.add(host, "web", [*gunicorn, f"--bind=0.0.0.0:{WEB_PORT}", "--workers=1"])
        uvicorn = [sys.executable, "-m", "uvicorn", "factory.asgi:application", "--host", "0.0.0.0"]
        uvicorn += ["--port", str(WEB_PORT), "--lifespan=off", "--no-access-log", "--log-level=warning"]
        uvicorn += ["--proxy-headers", "--timeout-graceful-shutdown=2"]  # FORWARDED_ALLOW_IPS: the proxy
        self.add("events", "web", uvicorn)
        conf = self.run_dir / "nginx.conf"
        temp = self.run_dir / "nginx-temp"
        temp.mkdir()
        conf.write_text(NGINX_CONF.format(run=self.run_dir, temp=temp, logs=self.logs, **NGINX_VARS))
        self.add("proxy", "nginx", ["nginx", "-c", str(conf), "-g", "daemon off;"])
        for host in ("web1", "web2", "events"):
            wait_for(lambda h=host: port_open(ip(h), WEB_PORT), 90, f"the web server of {host}")
        wait_for(lambda: port_open(ip("proxy"), PROXY_PORT), 30, "the proxy")

    # workers and schedulers

    def start_workers(self) -> None:
        for host in ("worker1", "worker2"):
            for queue, concurrency in WORKER_QUEUES.items():
                command = [sys.executable, "-m", "celery", "-A", "factory", "worker", "-Q", queue]
                command += ["-n", f"{queue}@{host}", f"--concurrency={concurrency}"]
                self.add(host, queue, [*command, "--without-gossip", "--without-mingle", "--loglevel=INFO"])

    def start_beats(self) -> None:
        for host in ("beat1", "beat2"):
            self.add(
                host, "beat", [sys.executable, "-m", "celery", "-A", "factory", "beat", "--loglevel=INFO"]
            )

    def beat(self, host: str) -> Process:
        return next(p for p in self.processes if p.host == host and p.name == "beat")

    def active_beat(self) -> str | None:
        acting = [host for host in ("beat1", "beat2") if "beat: Acquired lock" in self.beat(host).log()]
        return acting[0] if len(acting) == 1 else None

    def workers_ready(self) -> bool:
        workers = [p for p in self.processes if p.name in WORKER_QUEUES]
        return all(" ready." in p.log() for p in workers)


NGINX_VARS = {"proxy": ip("proxy"), "port": PROXY_PORT, "web_port": WEB_PORT}
NGINX_VARS.update({f"ip_{h}": ip(h) for h in ("web1", "web2", "events")})
NGINX_CONF = """
worker_processes 1;
pid {run}/nginx.pid;
error_log {logs}/proxy-nginx-error.log warn;
events {{ worker_connections 2048; }}
http {{
    access_log off;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    client_max_body_size 1m;
    upstream web {{
        server {ip_web1}:{web_port} max_fails=1 fail_timeout=10s;
        server {ip_web2}:{web_port} max_fails=1 fail_timeout=10s;
        keepalive 16;
    }}
    upstream events {{
        server {ip_events}:{web_port};
    }}
    server {{
        listen {proxy}:{port};
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $host;
        proxy_set_header X-Forwarded-For $remote_addr;
        proxy_connect_timeout 2s;
        location ~ ^/jobs/[0-9]+/stream/$ {{
            proxy_pass http://events;
            proxy_buffering off;
            proxy_read_timeout 3600s;
        }}
        location / {{
            proxy_pass http://web;
            proxy_next_upstream error timeout;
            proxy_read_timeout 60s;
        }}
    }}
}}
"""


# --- seeding and the clients ---------------------------------------------------------------------


def setup_django(env: dict[str, str]) -> None:
    os.environ.update(env, DB_POOL_MAX_SIZE="0")
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0, interactive=False)


def seed() -> str:
    """A Slurm cluster of 8 h100, a tenant with all of them, a member; returns the member's token."""
    from django.contrib.auth import get_user_model

    from factory.choices import ClusterKind, Role
    from factory.models import ApiToken, Cluster, GpuType, Identity, Membership, Pool, Tenant
    from quotas.models import Quota

    h100 = GpuType.objects.create(slug="h100", name="NVIDIA H100 80GB", memory_gb=80, board_power_watts=700)
    slurm = Cluster.objects.create(
        slug="slurm", name="Slurm", kind=ClusterKind.SLURM, connection={"job_group": "aifactory-portal"}
    )
    Pool.objects.create(cluster=slurm, gpu_type=h100, capacity=8, partition="gpu")
    tenant = Tenant.objects.create(slug=TENANT, name="Multihost lab")
    Quota.objects.create(tenant=tenant, gpu_type=h100, nominal=8)
    user = get_user_model().objects.create_user("member", password=PASSWORD)
    Membership.objects.create(user=user, tenant=tenant, role=Role.MEMBER)
    Identity.objects.create(user=user, posix_username=POSIX_USER)
    return ApiToken.issue(user, name="multihost")[1]


def request(method: str, path: str, headers: dict[str, str], body: bytes | None = None, timeout: float = 30):
    conn = http.client.HTTPConnection(ip("proxy"), PROXY_PORT, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.getheaders(), response.read()
    finally:
        conn.close()


class Submitter:
    """Submissions through the proxy, each retried with its Idempotency-Key until answered."""

    def __init__(self, token: str, run_file: Path) -> None:
        self.token = token
        self.run_file = run_file
        self.lock = threading.Lock()
        self.job_ids: dict[str, int] = {}  # key -> job id
        self.unanswered: list[str] = []
        self.retries = 0

    def submit(self, index: int) -> None:
        key = f"mh-{index}-{uuid.uuid4().hex}"
        body = json.dumps(
            {
                "tenant": TENANT,
                "name": f"mh-{index}",
                "command": f"echo $FACTORY_JOB_UID >> {self.run_file}",
                "gpu_type": "h100",
                "gpu_count": 1,
                "cpus": 1,
                "memory_gb": 1,
                "time_limit_minutes": 5,
            }
        ).encode()
        headers = {
            "Authorization": f"Token {self.token}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "Idempotency-Key": key,
        }
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                status, _, data = request("POST", "/api/v1/jobs/", headers, body)
                if status == 202:
                    with self.lock:
                        self.job_ids[key] = json.loads(data)["id"]
                    return
                if 400 <= status < 500 and status != 429:
                    raise RuntimeError(f"submission refused with {status}: {data[:300]!r}")
            except (OSError, http.client.HTTPException):
                pass
            with self.lock:
                self.retries += 1
            time.sleep(0.5)
        with self.lock:
            self.unanswered.append(key)


class Session:
    """A browser's session through the proxy: signed in, then following job streams."""

    def __init__(self) -> None:
        self.cookies: dict[str, str] = {}

    def headers(self, **extra: str) -> dict[str, str]:
        cookie = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        return {**({"Cookie": cookie} if cookie else {}), **extra}

    def keep(self, headers) -> None:
        for name, value in headers:
            if name.lower() == "set-cookie":
                key, _, rest = value.partition("=")
                self.cookies[key] = rest.split(";", 1)[0]

    def sign_in(self) -> None:
        status, headers, _ = request("GET", "/login/", self.headers())
        self.keep(headers)
        form = f"username=member&password={PASSWORD}&csrfmiddlewaretoken={self.cookies['csrftoken']}".encode()
        origin = f"http://{ip('proxy')}:{PROXY_PORT}"
        extra = {
            "Content-Type": "application/x-www-form-urlencoded",
            "Origin": origin,
            "Referer": f"{origin}/login/",
        }
        status, headers, _ = request("POST", "/login/", self.headers(**extra), form)
        self.keep(headers)
        if status != 302 or "sessionid" not in self.cookies:
            raise RuntimeError(f"signing in through the proxy failed ({status})")


class StreamFollower(threading.Thread):
    """Follows one job's stream: drops the connection after its first event with an id, comes back
    with Last-Event-ID, and reads until the job's stream ends."""

    def __init__(self, session: Session, job_id: int) -> None:
        super().__init__(daemon=True)
        self.session, self.job_id = session, job_id
        self.ids: list[str] = []
        self.resumed_from: list[str] = []  # the Last-Event-ID of each reconnect
        self.reconnects = 0
        self.ended = False
        self.error = ""

    def read(self, last_id: str | None, stop_after_first: bool) -> None:
        extra = {"Accept": "text/event-stream"}
        if last_id:
            extra["Last-Event-ID"] = last_id
            self.resumed_from.append(last_id)
        conn = http.client.HTTPConnection(ip("proxy"), PROXY_PORT, timeout=300)
        try:
            conn.request("GET", f"/jobs/{self.job_id}/stream/", headers=self.session.headers(**extra))
            response = conn.getresponse()
            if response.status != 200:
                raise RuntimeError(f"stream answered {response.status}")
            event = None
            while True:
                line = response.readline()
                if not line:
                    self.ended = True  # the server closed it: the job ended
                    return
                text = line.decode().rstrip("\n")
                if text.startswith("id: "):
                    self.ids.append(text[4:])
                    if stop_after_first:
                        return
                elif text.startswith("event: "):
                    event = text[7:]
                elif text == "" and event == "done":
                    self.ended = True
                    return
        finally:
            conn.close()

    @property
    def in_order(self) -> bool:
        """No message from before the point a reconnect resumed from (the cursors, event id and
        log offset, never go back)."""
        cursors = [tuple(map(int, re.findall(r"\d+", i))) for i in self.ids]
        return all(a <= b for a, b in itertools.pairwise(cursors))

    def run(self) -> None:
        try:
            self.read(None, stop_after_first=True)
            while not self.ended:
                self.reconnects += 1
                self.read(self.ids[-1] if self.ids else None, stop_after_first=False)
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"


# --- the run -------------------------------------------------------------------------------------


def clean_slurm() -> None:
    """No job of the run left at the shared Slurm, nor its tenant's account."""
    out = run("squeue", "-h", "-A", TENANT, "-o", "%i", check=False).stdout.split()
    if out:
        run("scancel", *out, check=False)
    for _ in range(30):  # slurmdbd learns of the cancellations a moment later
        run("sacctmgr", "-i", "delete", "account", TENANT, check=False)
        if not run(
            "sacctmgr", "-n", "-P", "show", "account", TENANT, "format=Account", check=False
        ).stdout.strip():
            return
        time.sleep(1)
    log(f"slurm: account {TENANT} could not be deleted; remove it with sacctmgr")


def job_states(ids: list[int]) -> Counter:
    from jobs.models import Job

    return Counter(Job.objects.filter(pk__in=ids).values_list("state", flat=True))


def check(submitter: Submitter, run_file: Path) -> dict:
    from jobs.choices import JobState
    from jobs.models import Job, JobEvent

    ids = list(submitter.job_ids.values())
    jobs = {job.pk: job for job in Job.objects.filter(pk__in=ids)}
    runs = Counter(run_file.read_text().split())
    running = Counter(
        JobEvent.objects.filter(job_id__in=ids, kind="state", state=JobState.RUNNING).values_list(
            "job_id", flat=True
        )
    )
    lost = len(submitter.unanswered) + len(set(ids) - set(jobs))
    ran_twice = 0
    for job in jobs.values():
        if job.state != JobState.SUCCEEDED or runs[str(job.uid)] == 0:
            lost += 1
        if runs[str(job.uid)] > 1 or running[job.pk] > 1:
            ran_twice += 1
    return {"lost": lost, "ran_twice": ran_twice, "states": dict(Counter(j.state for j in jobs.values()))}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--submitters", type=int, default=6, help="client threads submitting at once")
    parser.add_argument("--streams", type=int, default=6, help="jobs followed on their live streams")
    parser.add_argument("--keep", action="store_true", help="keep the run's directory (logs)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("scripts/multihost-test makes network namespaces: run it as root")
    if not shutil.which("sbatch") or not shutil.which("nginx"):
        sys.exit("needs the Slurm dev cluster (scripts/slurm-dev-cluster) and nginx")
    run_dir = Path(tempfile.mkdtemp(prefix="aif-multihost-", dir="/var/tmp"))
    run_dir.chmod(0o755)  # jobs run as the researcher's account and append to the shared run file
    deployment = Deployment(run_dir)
    result: dict = {"hosts": len(HOSTS), "jobs": args.jobs}
    try:
        log(f"Hosts {', '.join(f'{h}={ip(h)}' for h in HOSTS)} on bridge {BRIDGE}; run in {run_dir}")
        make_network()
        slurm_config_for_hosts(["worker1", "worker2"])
        deployment.start_database()
        setup_django(
            deployment.env("db") | {"DATABASE_URL": f"postgresql://postgres@{ip('db')}:{PG_PORT}/factory"}
        )
        token = seed()
        deployment.start_web()
        deployment.start_workers()
        deployment.start_beats()
        wait_for(deployment.workers_ready, 180, "every worker to be ready", interval=1)
        wait_for(deployment.active_beat, 60, "one beat to act")
        log(f"Deployed; {deployment.active_beat()} is the active beat. Submitting {args.jobs} jobs ...")
        result.update(drive(deployment, token, args))
    finally:
        with contextlib.suppress(Exception):
            from django.db import connections

            connections.close_all()
        teardown_network()
        clean_slurm()
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
        else:
            log(f"Logs kept in {run_dir / 'logs'}")
    print(json.dumps(result))
    return 0 if result.get("lost") == 0 and result.get("ran_twice") == 0 and result.get("streams_ok") else 1


def drive(deployment: Deployment, token: str, args: argparse.Namespace) -> dict:
    from jobs.choices import TERMINAL_STATES

    submitter = Submitter(token, deployment.run_file)
    started = time.monotonic()
    next_index = iter(range(args.jobs))
    index_lock = threading.Lock()

    def submit_all() -> None:
        while True:
            with index_lock:
                index = next(next_index, None)
            if index is None:
                return
            submitter.submit(index)

    threads = [threading.Thread(target=submit_all, daemon=True) for _ in range(args.submitters)]
    for thread in threads:
        thread.start()

    session = Session()
    session.sign_in()
    wait_for(lambda: len(submitter.job_ids) >= args.streams, 120, "the first submissions")
    followers = [
        StreamFollower(session, job_id) for job_id in list(submitter.job_ids.values())[: args.streams]
    ]
    for follower in followers:
        follower.start()

    def ended() -> int:
        states = job_states(list(submitter.job_ids.values()))
        return sum(n for state, n in states.items() if state in TERMINAL_STATES)

    wait_for(lambda: ended() >= args.jobs // 3, 900, "a third of the jobs to end", interval=1)
    beat = deployment.active_beat()
    standby = "beat2" if beat == "beat1" else "beat1"
    log(f"{ended()} jobs ended: killing web1, worker1 and the active beat ({beat})")
    kills = {host: kill_host(host) for host in ("web1", "worker1", beat)}
    killed_at = time.monotonic()
    takeover = wait_for(
        lambda: "beat: Acquired lock" in deployment.beat(standby).log() and time.monotonic(),
        120,
        "the standby beat",
    )
    beat_takeover_s = round(takeover - killed_at, 1)
    log(f"{standby} took over after {beat_takeover_s} s")
    for thread in threads:
        thread.join()
    submitted = len(submitter.job_ids)
    log(f"{submitted} jobs submitted ({submitter.retries} retried requests); waiting for them to end ...")
    last_progress, last_count = time.monotonic(), -1
    while True:
        count = ended()
        if count >= submitted:
            break
        if count != last_count:
            last_progress, last_count = time.monotonic(), count
        if time.monotonic() - last_progress > 180:
            log(f"no job ended for 180 s: {job_states(list(submitter.job_ids.values()))}")
            break
        time.sleep(1)
    elapsed = time.monotonic() - started
    for follower in followers:
        follower.join(timeout=30)
    result = check(submitter, deployment.run_file)
    streams_ok = sum(1 for f in followers if f.ended and f.reconnects >= 1 and not f.error and f.in_order)
    return {
        **result,
        "beat_takeover_s": beat_takeover_s,
        "jobs_per_s": round(submitted / elapsed, 2),
        "submitted": submitted,
        "retried_requests": submitter.retries,
        "killed_processes": kills,
        "streams": len(followers),
        "streams_ok": streams_ok == len(followers),
        "stream_errors": [f.error for f in followers if f.error],
        "stream_details": [(f.job_id, f.ended, f.reconnects, len(f.ids)) for f in followers],
    }


if __name__ == "__main__":
    sys.exit(main())
