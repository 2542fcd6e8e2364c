"""Nothing lost, nothing run twice, nothing billed twice: the whole stack, under faults.

    .venv/bin/python bench/chaos.py [--jobs 1000] [--seed 1] [--faults-every 8] [--rate 4] [--short]

The real stack, run as production runs it: PostgreSQL (a throwaway database,
`factory_bench_chaos`), a private Redis without persistence on a free port, the web server
(gunicorn, deploy/gunicorn.conf.py), two Celery workers and beat (`celery -A factory worker|beat`, with
FACTORY_SYNC_INTERVAL=1 s, FACTORY_DISPATCH_STALE_AFTER=5 s and FACTORY_METERING_INTERVAL=2 s, so
that recovery and metering are quick), and two clusters: the local backend (4 h100 and 4 a100
simulated GPUs) and the real Slurm of scripts/slurm-dev-cluster (8 fake h100 in partition `gpu`).
Two tenants share them, each with a nominal quota of half the GPUs of each type and a borrowing
limit: they borrow each other's idle GPUs, and admission preempts borrowers when a lender needs
its GPUs back, so jobs are also requeued as new attempts.

Jobs are submitted through the API (`POST /api/v1/jobs/`, an Idempotency-Key each, retried with
the same key until answered; now and then a submission is replayed on purpose) at a steady pace.
Each is a short command that appends a `start` and an `end` line to one run file, with the job's
uid (FACTORY_JOB_UID) and its working directory, which both backends name after the attempt's
dispatch key (`<uid>`, or `<uid>-r<attempt>` after a requeue): every run of every attempt shows.

Meanwhile a controller seeded with --seed injects a fault every --faults-every seconds (give or
take half), its kinds dealt from a shuffled deck so that each comes up as often:
- worker: SIGKILL one Celery worker with its pool (tasks in flight are neither acked nor
  finished), then start it again;
- beat: SIGKILL beat, then start it again;
- redis: SIGKILL Redis and start it again on the same port, empty: every queued message is lost,
  and only the portal's own sweep can recover the work they carried;
- slurmctld: stop the Slurm controller (SIGTERM), then start it as scripts/slurm-dev-cluster
  does: the portal can reach neither squeue nor sbatch meanwhile, while the jobs run on. Not
  SIGKILL: slurmctld then forgets what it did since its last state save (jobs it accepted and
  started, the ids it gave them), runs such jobs again and gives their ids to new jobs, and
  slurmd, seeing an id twice, drains the node ("Duplicate jobid"; tried). That tests Slurm, not
  the portal, and leaves the machine's shared cluster broken;
- cancel: cancel 1 to 3 random unfinished jobs through the API and submit a fresh copy of each.
As a process supervisor (systemd) would, the bench starts again any process that exits on its
own, and counts it (unexpected_exits). A sampler checks the quotas every ~0.5 s. Faults go on
after the last submission until the queue has drained to its last 16 jobs (as many as the GPUs;
and, for --short, until two full rounds of faults are dealt): then they stop, every process is
brought back, and the bench waits (bounded) for every job to end, for metering to bill them and
for admission to settle their reservations. Then each job is checked against the run file, its
events and the ledger.

Definitions. A job's runs are its `start` lines, per attempt; its charged seconds are the GPU
seconds of its ledger lines of kind usage or adjustment, divided by its GPUs; its billable seconds
are ended_at - started_at of its final attempt if it ended succeeded, failed, cancelled or timed
out having started, and not as a platform fault; 0 otherwise (preempted attempts and platform
faults are recorded, not charged: billing/metering.py).
- lost: jobs whose final state disagrees with what ran: not terminal at the end; failed, timed
  out or rejected (the commands exit 0 well within their limit: only the platform can end them
  so); cancelled without the controller asking; succeeded without a complete run (start and end)
  of its final attempt; or started in its final attempt with no start time recorded (unbilled).
- ran_twice: jobs with an attempt that started more than once; or with runs in more attempts, or
  in a later attempt, than the requeues recorded in its events allow (a requeue is a state event
  back to pending); or a replayed submission (same Idempotency-Key) that made a second job.
- billed_twice: jobs charged more than 1 s above their billable seconds, or with two charged
  ledger lines for overlapping periods.
- ledger_vs_runtime_max_error_s: the largest |charged - billable seconds| over the jobs with
  either; metering counts whole seconds, so it stays under 1 s.
- quota_oversubscribed_samples: samples in which a tenant's jobs holding GPUs (admitted,
  submitted or running) had more GPUs of a type than its nominal quota plus borrowing limit, or
  a pool's holding jobs more GPUs than its capacity.
Also printed: faults by kind; the jobs' final states; requeues; retried requests; processes that
exited on their own; backend leftovers (attempts still queued or running at a backend after every
job ended); ledger_vs_script_max_error_s, the largest |charged seconds - how long the script of
the final attempt ran, by its own clock| over succeeded jobs (Slurm counts whole seconds, so up to
about 1 s); summary_mismatches, monthly summary rows (what chargeback reads) whose GPU seconds or
line counts differ from the ledger's; late_runs, attempts whose run started more than 5 s after the
portal had moved their job off them (requeued, or ended): backend jobs nobody withdrew, which ran
unbilled on GPUs the portal thought free; all_ended and all_settled, whether the waits succeeded.

--short is the form `make test` runs (tests/integration/test_chaos.py): 60 jobs, at least two
rounds of every fault kind, well under 3 minutes on 2 cores. One run at a time per machine (it
restarts the shared slurmctld): a lock file enforces it. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import http.client
import itertools
import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path

import psycopg
from support import benchdb, services

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DB_NAME = "factory_bench_chaos"
LOCK_PATH = Path(tempfile.gettempdir()) / "factory-bench-chaos.lock"
TENANTS = ("chaos-a", "chaos-b")
# Slurm runs each job as its owner's POSIX account: the tenants' members get the test researchers
# scripts/slurm-dev-cluster makes.
POSIX_ACCOUNTS = {"chaos-a": "aif-alice", "chaos-b": "aif-bob"}
SLURM_CLUSTER = "slurm-local"
FAULT_KINDS = ("worker", "beat", "redis", "slurmctld", "cancel")
TERMINAL = frozenset({"succeeded", "failed", "cancelled", "timed_out", "rejected"})
HOLDING = ("admitted", "submitted", "running")
BILLABLE_ENDS = frozenset({"succeeded", "failed", "cancelled", "timed_out"})
ERROR_LINE = re.compile(r"^\[[^]]*(?:CRITICAL|ERROR)/.*$", re.MULTILINE)  # Celery's log format
# A working directory named after a dispatch key: local `<work root>/<key>`, Slurm `<root>/<key>`.
KEY_IN_PATH = re.compile(r"/([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})(?:-r([0-9]+))?$")
WORKERS = 2
WORKER_CONCURRENCY = 2
QUIET_TAIL = 16  # the GPUs of both clusters: once no more jobs than that are left, the faults stop
LATE_AFTER_S = 5.0  # a run starting this long after the portal moved its job off the attempt is late
STACK_SETTINGS = {
    "FACTORY_SYNC_INTERVAL": "1",
    "FACTORY_DISPATCH_STALE_AFTER": "5",
    "FACTORY_METERING_INTERVAL": "2",
    # A dispatcher killed mid-batch holds its jobs until its lease ends (default 300 s): scaled down
    # like the staleness above, and still longer than a batch's backend calls take here.
    "FACTORY_DISPATCH_LEASE": "30",
    # Backend tasks end (soft, then hard limit) before their lease does; a beat started again after
    # a kill waits out the dead one's lock in Redis.
    "FACTORY_BACKEND_TASK_TIME_LIMIT": "20",
    "FACTORY_TASK_KILL_GRACE": "5",
    "FACTORY_BEAT_TICK": "1",
    "FACTORY_BEAT_LOCK_TIMEOUT": "6",
    # Each Celery pool process runs one task at a time; the machine's PostgreSQL serves others too.
    "DB_POOL_MAX_SIZE": "2",
}


STARTED = time.monotonic()


def log(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:6.1f} s] {message}", flush=True)


# --- the stack --------------------------------------------------------------------------------------


class Stack:
    """PostgreSQL database, private Redis, web server, workers and beat of one run."""

    def __init__(self, var_dir: Path) -> None:
        self.var_dir = var_dir
        self.redis_port = services.free_port()
        self.web_port = services.free_port()
        self.env = stack_env(var_dir, self.redis_port)
        logs = var_dir / "logs"
        logs.mkdir()
        self.redis = services.redis_server(self.redis_port, logs / "redis.log")
        self.web = services.web_server(self.env, self.web_port, 1, logs / "web.log")
        self.workers = [
            services.celery_worker(f"chaos{i}", self.env, logs / f"worker{i}.log", WORKER_CONCURRENCY, "INFO")
            for i in range(WORKERS)
        ]
        self.beat = services.celery_beat(self.env, var_dir / "beat-schedule", logs / "beat.log", "INFO")
        self.lock = threading.Lock()  # a fault's kill and restart, or the supervisor's restart
        self.exits: Counter[str] = Counter()

    @property
    def services(self) -> list[services.Service]:
        return [self.redis, self.web, *self.workers, self.beat]

    def start(self) -> None:
        self.redis.start().wait_for_port(self.redis_port)
        self.web.start()
        for worker in self.workers:
            worker.start()
        self.beat.start()
        self.web.wait_for_port(self.web_port)

    def crash(self, service: services.Service, down_s: float) -> None:
        """SIGKILL a service and start it again `down_s` later."""
        with self.lock:
            service.kill()
            time.sleep(down_s)
            service.start()
            if service is self.redis:
                self.redis.wait_for_port(self.redis_port)

    def supervise(self) -> None:
        """Start again whatever exited on its own, as a process supervisor (systemd) would."""
        with self.lock:
            for service in self.services:
                if service.process is not None and not service.alive:
                    errors = ERROR_LINE.findall(service.tail(20000))
                    fatal = [line for line in errors if "CRITICAL/" in line] or errors[-1:]
                    log(
                        f"  {service.name} exited on its own ({service.process.returncode}); "
                        f"started again. It said: {fatal[-1] if fatal else 'nothing'}"
                    )
                    self.exits[service.name] += 1
                    service.start()

    def heal(self) -> list[str]:
        """Bring back whatever is down (the controller stopped between a kill and a restart)."""
        healed = []
        with self.lock:
            for service in self.services:
                if not service.alive:
                    service.start()
                    healed.append(service.name)
            self.redis.wait_for_port(self.redis_port)
        if not services.slurmctld_up():
            services.start_slurmctld()
            healed.append("slurmctld")
        return healed

    def stop(self) -> None:
        for service in [self.web, self.beat, *self.workers, self.redis]:
            service.stop()


def stack_env(var_dir: Path, redis_port: int) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("FACTORY_", "DB_", "CELERY_"))
        and k not in {"DEBUG", "REDIS_URL", "DATABASE_URL"}
    }
    env.update(
        DATABASE_URL=benchdb.url(DB_NAME),
        REDIS_URL=f"redis://{services.HOST}:{redis_port}/0",
        SECRET_KEY="bench-only-not-a-secret-" + "x" * 40,
        DEBUG="0",
        SECURE_SSL_REDIRECT="0",
        ALLOWED_HOSTS=f"{services.HOST},localhost",
        FACTORY_VAR_DIR=str(var_dir),
        # Production settings with a local cluster: allowed explicitly, as on a host set aside for it.
        FACTORY_ALLOW_LOCAL_BACKEND="1",
        FACTORY_LOCAL_BACKEND_ROOT=str(var_dir / "local-backend"),
        FACTORY_LOCAL_WORK_ROOT=str(var_dir / "local-work"),
        FACTORY_SLURM_JOB_ROOT=str(var_dir / "slurm-jobs"),
        LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
        **STACK_SETTINGS,
    )
    return env


def setup_django(env: dict[str, str]) -> None:
    """Django in this process, on the run's database (to seed it and to check it at the end)."""
    os.environ.update(env, DB_POOL_MAX_SIZE="0", DJANGO_SETTINGS_MODULE="factory.settings")
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0, interactive=False)


def seed() -> dict[str, str]:
    """GPU types, the two clusters and their pools, the tenants with their quotas, a member each;
    returns each tenant's member's API token."""
    from django.contrib.auth import get_user_model

    from factory.choices import ClusterKind, Role
    from factory.models import ApiToken, Cluster, GpuType, Identity, Membership, Pool, Tenant
    from quotas.models import Quota

    h100 = GpuType.objects.create(slug="h100", name="NVIDIA H100 80GB", memory_gb=80, board_power_watts=700)
    a100 = GpuType.objects.create(slug="a100", name="NVIDIA A100 80GB", memory_gb=80, board_power_watts=400)
    local = Cluster.objects.create(slug="local", name="This machine", kind=ClusterKind.LOCAL)
    slurm = Cluster.objects.create(slug=SLURM_CLUSTER, name="Slurm", kind=ClusterKind.SLURM)
    Pool.objects.create(cluster=local, gpu_type=h100, capacity=4)
    Pool.objects.create(cluster=local, gpu_type=a100, capacity=4)
    Pool.objects.create(cluster=slurm, gpu_type=h100, capacity=8, partition="gpu")
    tokens = {}
    for slug in TENANTS:
        tenant = Tenant.objects.create(slug=slug, name=f"Chaos {slug}")
        Quota.objects.create(tenant=tenant, gpu_type=h100, nominal=6, borrowing_limit=4)
        Quota.objects.create(tenant=tenant, gpu_type=a100, nominal=2, borrowing_limit=2)
        user = get_user_model().objects.create_user(f"{slug}-member")
        Membership.objects.create(user=user, tenant=tenant, role=Role.MEMBER)
        Identity.objects.create(user=user, posix_username=POSIX_ACCOUNTS[slug])
        tokens[slug] = ApiToken.issue(user, name="chaos")[1]
    return tokens


# --- the API client ---------------------------------------------------------------------------------


class ApiError(Exception):
    pass


@dataclasses.dataclass
class Submission:
    tenant: str
    key: str
    body: dict
    job_id: int | None = None


class Api:
    """Plain HTTP/1.1 requests to the web server, one connection each. A submission is retried
    with its Idempotency-Key until the server answers it: a retry never makes a second job."""

    def __init__(self, port: int, tokens: dict[str, str], run_file: Path) -> None:
        self.port = port
        self.tokens = tokens
        self.run_file = run_file
        self.lock = threading.Lock()
        self.submissions: list[Submission] = []
        self.retries = 0
        self.replays = 0
        self.replay_mismatches: list[tuple[int, int]] = []
        self.cancel_asked: set[int] = set()

    def request(self, method: str, path: str, tenant: str, body: dict | None = None, key: str = ""):
        headers = {"Authorization": f"Token {self.tokens[tenant]}", "Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if key:
            headers["Idempotency-Key"] = key
        conn = http.client.HTTPConnection(services.HOST, self.port, timeout=30)
        try:
            conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
            response = conn.getresponse()
            data = response.read()
            return response.status, json.loads(data) if data else {}
        finally:
            conn.close()

    def post_job(self, submission: Submission, give_up_after: float = 120.0) -> dict:
        deadline = time.monotonic() + give_up_after
        while True:
            try:
                status, data = self.request(
                    "POST", "/api/v1/jobs/", submission.tenant, submission.body, submission.key
                )
                if status == 202:
                    return data
                if 400 <= status < 500 and status != 429:
                    raise ApiError(f"submission refused with {status}: {data}")
                error = f"HTTP {status}"
            except (OSError, http.client.HTTPException, ValueError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                raise ApiError(f"no answer to a submission within {give_up_after:g} s ({error})")
            with self.lock:
                self.retries += 1
            time.sleep(0.5)

    def submit(self, rng: random.Random, tenant: str | None = None, replay: bool = False) -> Submission:
        tenant = tenant or rng.choice(TENANTS)
        gpu_type = "a100" if rng.random() < 0.25 else "h100"
        name = f"chaos-{len(self.submissions)}"
        runs = shlex.quote(str(self.run_file))
        line = '$FACTORY_JOB_UID "$PWD"'
        command = (
            f'echo "start {line} $(date +%s.%N)" >> {runs}; sleep 0.2; '
            f'echo "end {line} $(date +%s.%N)" >> {runs}'
        )
        body = {
            "tenant": tenant,
            "name": name,
            "command": command,
            "gpu_type": gpu_type,
            "gpu_count": 2 if rng.random() < 0.2 else 1,
            "cpus": 1,
            "memory_gb": 1,
            "time_limit_minutes": 5,
        }
        submission = Submission(tenant, f"chaos-{uuid.uuid4().hex}", body)
        with self.lock:
            self.submissions.append(submission)
        submission.job_id = self.post_job(submission)["id"]
        if replay:  # the same request again, as a client that never saw the answer would send it
            again = self.post_job(submission)["id"]
            with self.lock:
                self.replays += 1
                if again != submission.job_id:
                    self.replay_mismatches.append((submission.job_id, again))
        return submission

    def cancel(self, job_id: int, tenant: str) -> int:
        with self.lock:
            self.cancel_asked.add(job_id)
        try:
            status, _ = self.request("POST", f"/api/v1/jobs/{job_id}/cancel/", tenant)
        except (OSError, http.client.HTTPException, ValueError):
            return 0
        return status


# --- the run's threads ------------------------------------------------------------------------------


class Submitter(threading.Thread):
    """`count` submissions at `rate` per second."""

    def __init__(self, api: Api, count: int, rate: float, rng: random.Random) -> None:
        super().__init__(name="submitter", daemon=True)
        self.api, self.count, self.rate, self.rng = api, count, rate, rng
        self.error: BaseException | None = None
        self.finished = threading.Event()

    def run(self) -> None:
        started = time.monotonic()
        try:
            for i in range(self.count):
                time.sleep(max(0.0, started + i / self.rate - time.monotonic()))
                self.api.submit(self.rng, replay=self.rng.random() < 0.05)
        except BaseException as exc:
            self.error = exc
        finally:
            self.finished.set()


def unfinished_jobs() -> list[tuple[int, str]]:
    """(id, tenant slug) of every job not ended yet."""
    with psycopg.connect(benchdb.url(DB_NAME), autocommit=True) as conn:
        return conn.execute(
            "SELECT j.id, t.slug FROM jobs_job j JOIN factory_tenant t ON t.id = j.tenant_id "
            "WHERE NOT j.state = ANY(%s) ORDER BY j.id",
            [list(TERMINAL)],
        ).fetchall()


class Controller(threading.Thread):
    """Injects one fault every `every` seconds (0.5 to 1.5 times that), kinds dealt from a shuffled
    deck, until the submitter is done, at least `rounds` full rounds of the deck were dealt, and
    the queue has drained to the last QUIET_TAIL jobs (or `tail_s` seconds passed since the last
    submission): every job goes through the faults, the last few end without them."""

    def __init__(
        self,
        stack: Stack,
        api: Api,
        rng: random.Random,
        every: float,
        rounds: int,
        done: threading.Event,
        tail_s: float,
    ) -> None:
        super().__init__(name="controller", daemon=True)
        self.stack, self.api, self.rng = stack, api, rng
        self.every, self.rounds, self.done, self.tail_s = every, rounds, done, tail_s
        self.stop_now = threading.Event()
        self.injected: Counter[str] = Counter()
        self.error: BaseException | None = None
        self.deck: list[str] = []
        self.dealt_rounds = 0

    def run(self) -> None:
        try:
            done_at = None
            while not self.stop_now.wait(self.every * self.rng.uniform(0.5, 1.5)):
                if self.done.is_set() and done_at is None:
                    done_at = time.monotonic()
                if done_at is not None and self.finished(done_at):
                    return
                if not self.deck:
                    self.deck = list(FAULT_KINDS)
                    self.rng.shuffle(self.deck)
                    self.dealt_rounds += 1
                kind = self.deck.pop()
                getattr(self, f"fault_{kind}")()
                self.injected[kind] += 1
        except BaseException as exc:
            self.error = exc

    def finished(self, done_at: float) -> bool:
        if self.deck or self.dealt_rounds < self.rounds:
            return False
        return len(unfinished_jobs()) <= QUIET_TAIL or time.monotonic() - done_at > self.tail_s

    def fault_worker(self) -> None:
        index = self.rng.randrange(len(self.stack.workers))
        log(f"  fault: SIGKILL worker {index}")
        self.stack.crash(self.stack.workers[index], self.rng.uniform(0.5, 3.0))

    def fault_beat(self) -> None:
        log("  fault: SIGKILL beat")
        self.stack.crash(self.stack.beat, self.rng.uniform(0.5, 3.0))

    def fault_redis(self) -> None:
        log("  fault: SIGKILL Redis, start it empty")
        self.stack.crash(self.stack.redis, self.rng.uniform(1.0, 4.0))

    def fault_slurmctld(self) -> None:
        log("  fault: stop slurmctld")
        services.stop_slurmctld()
        time.sleep(self.rng.uniform(0.5, 3.0))
        services.start_slurmctld()

    def fault_cancel(self) -> None:
        rows = unfinished_jobs()
        chosen = self.rng.sample(rows, min(len(rows), self.rng.randint(1, 3)))
        log(f"  fault: cancel and resubmit jobs {[job_id for job_id, _ in chosen]}")
        for job_id, tenant in chosen:
            self.api.cancel(job_id, tenant)
            self.api.submit(self.rng, tenant=tenant)


class Supervisor(threading.Thread):
    """Restarts what exits on its own, every `interval` seconds (see Stack.supervise)."""

    def __init__(self, stack: Stack, interval: float = 0.5) -> None:
        super().__init__(name="supervisor", daemon=True)
        self.stack, self.interval = stack, interval
        self.stop_now = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop_now.wait(self.interval):
                self.stack.supervise()
        except BaseException as exc:
            self.error = exc


class QuotaSampler(threading.Thread):
    """Every `interval` seconds, one query: the GPUs held per tenant, GPU type and cluster."""

    def __init__(self, interval: float = 0.5) -> None:
        super().__init__(name="quota-sampler", daemon=True)
        self.interval = interval
        self.stop_now = threading.Event()
        self.samples = 0
        self.oversubscribed: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with psycopg.connect(benchdb.url(DB_NAME), autocommit=True) as conn:
                limits = {
                    (tenant, gpu_type): nominal + (borrowing if borrowing is not None else 10**9)
                    for tenant, gpu_type, nominal, borrowing in conn.execute(
                        "SELECT tenant_id, gpu_type_id, nominal, borrowing_limit FROM quotas_quota"
                    )
                }
                capacity = {
                    (cluster, gpu_type): capacity
                    for cluster, gpu_type, capacity in conn.execute(
                        "SELECT cluster_id, gpu_type_id, capacity FROM factory_pool"
                    )
                }
                while not self.stop_now.wait(self.interval):
                    rows = conn.execute(
                        "SELECT tenant_id, gpu_type_id, cluster_id, SUM(gpu_count) FROM jobs_job "
                        "WHERE state = ANY(%s) GROUP BY 1, 2, 3",
                        [list(HOLDING)],
                    ).fetchall()
                    self.samples += 1
                    problem = self.check(rows, limits, capacity)
                    if problem:
                        self.oversubscribed.append(problem)
        except BaseException as exc:
            self.error = exc

    @staticmethod
    def check(rows, limits, capacity) -> str:
        by_tenant: Counter = Counter()
        by_pool: Counter = Counter()
        for tenant, gpu_type, cluster, gpus in rows:
            by_tenant[tenant, gpu_type] += gpus
            by_pool[cluster, gpu_type] += gpus
        over = [
            f"{what} {key}: {gpus} > {limit.get(key, 0)}"
            for what, held, limit in (("tenant", by_tenant, limits), ("pool", by_pool, capacity))
            for key, gpus in held.items()
            if gpus > limit.get(key, 0)
        ]
        return "; ".join(over)


# --- waiting for the end ----------------------------------------------------------------------------


def job_states() -> Counter[str]:
    from jobs.models import Job

    return Counter(Job.objects.values_list("state", flat=True))


def wait_until_ended(stall_s: float, cap_s: float) -> bool:
    """Until every job is terminal; gives up after `stall_s` without a job ending, or `cap_s`."""
    started = last_change = time.monotonic()
    ended_before = -1
    reported = 0.0
    while True:
        states = job_states()
        ended = sum(n for state, n in states.items() if state in TERMINAL)
        now = time.monotonic()
        if ended == sum(states.values()):
            return True
        if ended != ended_before:
            ended_before, last_change = ended, now
        if now - last_change > stall_s or now - started > cap_s:
            log(f"  gave up waiting: {dict(states)}")
            return False
        if now - reported > 10:
            log(f"  waiting for the last jobs: {dict(states)}")
            reported = now
        time.sleep(0.5)


def wait_until_settled(timeout_s: float) -> bool:
    """Until every job that should be charged has a charged ledger line, and every reservation
    admission made is settled (every job has ended)."""
    from django.db.models import F

    from billing.models import UsageKind, UsageRecord
    from jobs.models import Job
    from quotas.models import Reservation

    deadline = time.monotonic() + timeout_s
    while True:
        billable = set(
            Job.objects.filter(
                state__in=BILLABLE_ENDS, platform_fault=False, ended_at__gt=F("started_at")
            ).values_list("pk", flat=True)
        )
        charged = set(
            UsageRecord.objects.filter(kind__in=[UsageKind.USAGE, UsageKind.ADJUSTMENT]).values_list(
                "job_id", flat=True
            )
        )
        unsettled = Reservation.objects.filter(settled_at=None).count()
        if billable <= charged and not unsettled:
            return True
        if time.monotonic() > deadline:
            missing = sorted(billable - charged)
            log(f"  not metered: {len(missing)} job(s), e.g. {missing[:5]}; {unsettled} reservation(s) open")
            return False
        time.sleep(0.5)


# --- checking every job -----------------------------------------------------------------------------


@dataclasses.dataclass
class Runs:
    """The run file: per (uid, attempt), how many times it started and ended, and when (the last)."""

    starts: Counter = dataclasses.field(default_factory=Counter)
    ends: Counter = dataclasses.field(default_factory=Counter)
    times: dict = dataclasses.field(default_factory=dict)
    unreadable: list[str] = dataclasses.field(default_factory=list)

    @classmethod
    def read(cls, path: Path) -> Runs:
        runs = cls()
        text = path.read_text() if path.exists() else ""
        for line in text.splitlines():
            parts = line.split(" ")
            match = KEY_IN_PATH.search(parts[2]) if len(parts) == 4 else None
            if not match or match[1] != parts[1] or parts[0] not in ("start", "end"):
                runs.unreadable.append(line)
                continue
            key = (match[1], int(match[2] or 0))
            (runs.starts if parts[0] == "start" else runs.ends)[key] += 1
            runs.times[parts[0], key] = float(parts[3])
        return runs

    def seconds(self, key: tuple[str, int]) -> float | None:
        """How long the script of one attempt ran, if it started and ended once."""
        if self.starts[key] != 1 or self.ends[key] != 1:
            return None
        return self.times["end", key] - self.times["start", key]

    def attempts(self, uid: str) -> dict[int, int]:
        return {attempt: n for (u, attempt), n in self.starts.items() if u == uid}


def verify(runs: Runs, api: Api) -> tuple[dict, list[str]]:
    """The figures of the definitions above, and a line per job found wrong."""
    from billing.models import UsageKind, UsageRecord
    from jobs.models import Job, JobEvent

    requeued = JobEvent.objects.filter(kind="state", state="pending", message__startswith="Back to pending")
    left_at = defaultdict(list)  # per job, when it left each attempt (requeued), in order
    for job_id, at in requeued.order_by("pk").values_list("job_id", "at"):
        left_at[job_id].append(at.timestamp())
    requeues = Counter({job_id: len(times) for job_id, times in left_at.items()})
    late = 0
    lines = defaultdict(list)
    for line in UsageRecord.objects.order_by("period_start"):
        lines[line.job_id].append(line)
    lost, twice, billed_twice, problems = Counter(), set(), set(), []
    worst_error = worst_script_error = 0.0
    for job in Job.objects.order_by("pk"):
        uid = str(job.uid)
        ran = runs.attempts(uid)
        final = (uid, job.attempt)
        why_lost = lost_because(job, ran, runs.ends[final], api.cancel_asked)
        if why_lost:
            lost[why_lost] += 1
            problems.append(f"lost: job {job.pk} {describe(job, ran)}: {LOST_CAUSES[why_lost]}")
        for attempt, after in late_runs(job, left_at[job.pk], runs):
            late += 1
            problems.append(f"late run: job {job.pk} {describe(job, ran)}: attempt {attempt} {after}")
        why_twice = ran_twice_because(ran, requeues[job.pk])
        if why_twice:
            twice.add(job.pk)
            problems.append(f"ran twice: job {job.pk} {describe(job, ran)}: {why_twice}")
        charged = [line for line in lines[job.pk] if line.kind in (UsageKind.USAGE, UsageKind.ADJUSTMENT)]
        charged_s = sum(line.gpu_seconds for line in charged) / job.gpu_count
        billable_s = billable_seconds(job)
        if charged or billable_s:
            worst_error = max(worst_error, abs(charged_s - billable_s))
        script_s = runs.seconds(final)
        if job.state == "succeeded" and script_s is not None:
            worst_script_error = max(worst_script_error, abs(charged_s - script_s))
        overlap = overlapping(charged)
        if charged_s > billable_s + 1 or overlap:
            billed_twice.add(job.pk)
            problems.append(
                f"billed twice: job {job.pk} {describe(job, ran)}: charged {charged_s:g} s for "
                f"{billable_s:.3f} s billable{'; overlapping lines ' + overlap if overlap else ''}"
            )
    for first, second in api.replay_mismatches:
        twice.add(first)
        problems.append(f"ran twice: a replayed submission of job {first} made job {second}")
    for line in runs.unreadable[:5]:
        problems.append(f"unreadable run line: {line!r}")
    figures = {
        "lost": sum(lost.values()),
        "lost_causes": dict(sorted(lost.items())),
        "ran_twice": len(twice),
        "billed_twice": len(billed_twice),
        "ledger_vs_runtime_max_error_s": round(worst_error, 3),
        "ledger_vs_script_max_error_s": round(worst_script_error, 3),
        "summary_mismatches": summary_mismatches(problems),
        "late_runs": late,
        "requeues": sum(requeues.values()),
        "runs": sum(runs.starts.values()),
    }
    return figures, problems


def late_runs(job, left_at: list[float], runs: Runs) -> list[tuple[int, str]]:
    """Attempts of the job whose run started LATE_AFTER_S after the job left them."""
    ended = [job.ended_at.timestamp()] if job.ended_at else []
    late = []
    for attempt, left in enumerate([*left_at, *ended]):
        started = runs.times.get(("start", (str(job.uid), attempt)))
        if started and started > left + LATE_AFTER_S:
            late.append((attempt, f"started {started - left:.1f} s after the job left it"))
    return late


def summary_mismatches(problems: list[str]) -> int:
    """Monthly summary rows (what chargeback reports read) that disagree with the ledger lines."""
    from django.db.models import Count, Sum

    from billing.metering import SUMMARY_KEY
    from billing.models import MonthlySummary, UsageRecord

    ledger = {
        tuple(row[k] for k in SUMMARY_KEY): (row["seconds"], row["lines"])
        for row in UsageRecord.objects.values(*SUMMARY_KEY).annotate(
            seconds=Sum("gpu_seconds"), lines=Count("pk")
        )
    }
    summary = {
        tuple(row[k] for k in SUMMARY_KEY): (row["gpu_seconds"], row["lines"])
        for row in MonthlySummary.objects.values(*SUMMARY_KEY, "gpu_seconds", "lines")
    }
    wrong = sorted(key for key in ledger.keys() | summary.keys() if ledger.get(key) != summary.get(key))
    for key in wrong:
        problems.append(f"summary {key}: ledger (GPU s, lines) {ledger.get(key)}, summary {summary.get(key)}")
    return len(wrong)


LOST_CAUSES = {
    "not_terminal": "not terminal at the end",
    "ended_by_platform": "failed, timed out or rejected, though its command exits 0 in time",
    "cancelled_unasked": "cancelled, but nobody asked",
    "succeeded_without_run": "succeeded without a complete run of its final attempt",
    "ran_unrecorded": "ran in its final attempt, but no start was recorded (not billed)",
}


def lost_because(job, ran: dict[int, int], final_ends: int, cancel_asked: set[int]) -> str:
    """The key in LOST_CAUSES of why the job counts as lost, or ""."""
    ran_final = ran.get(job.attempt, 0)
    if job.state not in TERMINAL:
        return "not_terminal"
    if job.state in ("failed", "timed_out", "rejected"):
        return "ended_by_platform"
    if job.state == "cancelled" and job.pk not in cancel_asked:
        return "cancelled_unasked"
    if job.state == "succeeded" and not (ran_final and final_ends):
        return "succeeded_without_run"
    if ran_final and job.started_at is None:
        return "ran_unrecorded"
    return ""


def ran_twice_because(ran: dict[int, int], requeues: int) -> str:
    again = sorted(attempt for attempt, n in ran.items() if n > 1)
    if again:
        return f"attempt(s) {again} started more than once"
    if len(ran) > requeues + 1 or any(attempt > requeues for attempt in ran):
        return f"runs in attempts {sorted(ran)} with {requeues} requeue(s) recorded"
    return ""


def billable_seconds(job) -> float:
    if job.state not in BILLABLE_ENDS or job.platform_fault or not (job.started_at and job.ended_at):
        return 0.0
    return max(0.0, (job.ended_at - job.started_at).total_seconds())


def overlapping(lines: list) -> str:
    """Two periods charged (net of the corrections that credit them back) that overlap."""
    net: Counter = Counter()
    for line in lines:
        net[line.period_start, line.period_end] += line.gpu_seconds
    charged = sorted(period for period, seconds in net.items() if seconds > 0)
    for earlier, later in itertools.pairwise(charged):
        if later[0] < earlier[1]:
            return f"{earlier[0]:%H:%M:%S}-{earlier[1]:%H:%M:%S} and {later[0]:%H:%M:%S}-{later[1]:%H:%M:%S}"
    return ""


def describe(job, ran: dict[int, int]) -> str:
    return (
        f"({job.state}, attempt {job.attempt}, cluster {job.cluster_id}, runs per attempt {ran}, "
        f"reason {job.reason!r})"
    )


# --- the backends' leftovers ------------------------------------------------------------------------


def slurm(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=False).stdout


def slurm_leftovers() -> list[str]:
    """Jobs of the run's tenants' Slurm accounts still queued or running."""
    return slurm("squeue", "-h", "-A", ",".join(TENANTS), "-t", "PD,R,CG", "-o", "%i").split()


def local_leftovers(var_dir: Path) -> list[int]:
    """Processes still running under the run's local backend (runners and job scripts), by pid."""
    marker = str(var_dir / "local-backend").encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if marker in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
    return found


def clean_backends(var_dir: Path) -> None:
    ids = slurm_leftovers()
    if ids:
        slurm("scancel", *ids)
    for pid in local_leftovers(var_dir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for _ in range(30):  # slurmdbd learns of the cancellations a moment later
        for account in TENANTS:
            slurm("sacctmgr", "-i", "delete", "account", account)
        if not slurm("sacctmgr", "-n", "-P", "show", "account", ",".join(TENANTS), "format=Account").strip():
            return
        time.sleep(1)
    log(f"slurm: accounts {', '.join(TENANTS)} could not be deleted; remove them with sacctmgr")


# --- the run ----------------------------------------------------------------------------------------


def run(args: argparse.Namespace, var_dir: Path) -> dict:
    began = time.monotonic()
    if not services.slurmctld_up():
        services.start_slurmctld()
    # Run as root, the local backend runs jobs as FACTORY_LOCAL_RUN_AS, and Slurm as the members'
    # POSIX accounts: they must pass through the run's directory to their working directories and
    # append to the run file.
    var_dir.chmod(0o711)
    run_file = var_dir / "runs.txt"
    run_file.touch()
    run_file.chmod(0o666)
    stack = Stack(var_dir)
    log(f"Creating database {DB_NAME}, migrating and seeding ...")
    benchdb.recreate(DB_NAME)
    setup_django(stack.env)
    tokens = seed()
    threads: list = []
    try:
        log(
            f"Starting Redis on {stack.redis_port}, the web server on {stack.web_port}, "
            f"{WORKERS} workers and beat ..."
        )
        stack.start()
        api = Api(stack.web_port, tokens, run_file)
        submitter = Submitter(api, args.jobs, args.rate, random.Random(f"{args.seed}-jobs"))
        faults_rng = random.Random(f"{args.seed}-faults")
        controller = Controller(
            stack, api, faults_rng, args.faults_every, args.rounds, submitter.finished, args.drain / 2
        )
        sampler = QuotaSampler()
        supervisor = Supervisor(stack)
        threads = [supervisor, sampler, submitter, controller]
        log(
            f"Submitting {args.jobs} jobs at {args.rate:g}/s; a fault every ~{args.faults_every:g} s "
            f"(seed {args.seed}) ..."
        )
        chaos_began = time.monotonic()
        for thread in threads:
            thread.start()
        submitter.join()
        controller.join()
        chaos_s = time.monotonic() - chaos_began
        for thread in (submitter, controller):
            if thread.error is not None:
                raise RuntimeError(f"the {thread.name} failed") from thread.error
        healed = stack.heal()
        log(
            f"Faults stopped after {chaos_s:.0f} s: {dict(controller.injected)}"
            + (f"; brought back {', '.join(healed)}" if healed else "")
        )
        ended = wait_until_ended(stall_s=args.stall, cap_s=args.drain)
        settled = wait_until_settled(timeout_s=30)
        for thread in (sampler, supervisor):
            thread.stop_now.set()
            thread.join()
            if thread.error is not None:
                raise RuntimeError(f"the {thread.name} failed") from thread.error
        leftovers = len(slurm_leftovers()) + len(local_leftovers(var_dir))
        figures, problems = verify(Runs.read(run_file), api)
        states = job_states()
    finally:
        for thread in threads:
            if hasattr(thread, "stop_now"):
                thread.stop_now.set()
        stack.stop()
        from django.db import connections

        connections.close_all()
        clean_backends(var_dir)
        if args.keep:
            log(f"The run's database is kept: {benchdb.url(DB_NAME)}")
        else:
            benchdb.drop(DB_NAME)
    for problem in problems[:50]:
        log(problem)
    for problem in sampler.oversubscribed[:5]:
        log(f"quota oversubscribed: {problem}")
    return {
        "jobs": sum(states.values()),
        "faults_injected": sum(controller.injected.values()),
        "lost": figures["lost"],
        "ran_twice": figures["ran_twice"],
        "billed_twice": figures["billed_twice"],
        "ledger_vs_runtime_max_error_s": figures["ledger_vs_runtime_max_error_s"],
        "quota_oversubscribed_samples": len(sampler.oversubscribed),
        "lost_causes": figures["lost_causes"],
        "ledger_vs_script_max_error_s": figures["ledger_vs_script_max_error_s"],
        "summary_mismatches": figures["summary_mismatches"],
        "late_runs": figures["late_runs"],
        "faults": dict(sorted(controller.injected.items())),
        "states": dict(sorted(states.items())),
        "cancels_asked": len(api.cancel_asked),
        "requeues": figures["requeues"],
        "runs": figures["runs"],
        "quota_samples": sampler.samples,
        "request_retries": api.retries,
        "unexpected_exits": dict(sorted(stack.exits.items())),
        "replayed_submissions": api.replays,
        "backend_leftovers": leftovers,
        "all_ended": ended,
        "all_settled": settled,
        "seed": args.seed,
        "chaos_s": round(chaos_s, 1),
        "wall_s": round(time.monotonic() - began, 1),
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, help="jobs submitted (default 1000; --short: 60)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the jobs' shapes and of the faults")
    parser.add_argument(
        "--faults-every", type=float, help="mean seconds between faults (default 8; --short: 3)"
    )
    parser.add_argument("--rate", type=float, help="submissions per second (default 4; --short: 1.5)")
    parser.add_argument("--short", action="store_true", help="the form `make test` runs")
    parser.add_argument(
        "--keep", action="store_true", help="keep the run's database and directory (logs, run file)"
    )
    args = parser.parse_args()
    short = args.short
    args.jobs = args.jobs or (60 if short else 1000)
    args.faults_every = args.faults_every or (3.0 if short else 8.0)
    args.rate = args.rate or (1.5 if short else 4.0)
    args.rounds = 2 if short else 1
    args.stall = 60.0 if short else 180.0  # seconds without a job ending before giving up
    args.drain = 90.0 if short else 1800.0  # seconds at most for the last jobs to end
    return args


def main() -> int:
    args = parse_args()
    for tool in ("redis-server", "sbatch"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing: see scripts/test-services and scripts/slurm-dev-cluster")
    with LOCK_PATH.open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit(f"another chaos run holds {LOCK_PATH}") from None
        var_dir = Path(tempfile.mkdtemp(prefix="factory-bench-chaos-"))
        try:
            result = run(args, var_dir)
        finally:
            if args.keep:
                log(f"The run's directory (logs, run file) is kept: {var_dir}")
            else:
                shutil.rmtree(var_dir, ignore_errors=True)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
