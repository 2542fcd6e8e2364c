"""A hung Slurm controller holds up only the Slurm workers: with real worker processes, one per
queue, Kubernetes jobs submitted while every Slurm dispatch is stuck in a call to the controller
still go out, and metering still runs.

The hung controller: the Slurm client tools of a second Slurm cluster use a copy of the dev
cluster's configuration naming a controller address where a socket takes connections and never
answers, as a stopped or wedged slurmctld does. Its calls end only at the adapter's command
timeout. The Kubernetes cluster is the project's fake API server (no Kubernetes API server can run
here), reached by the workers over HTTP.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import tempfile
import threading
from pathlib import Path

import pytest
import redis
import yaml
from django.conf import settings

from factory.models import Cluster, Pool
from jobs.choices import JobState
from jobs.models import Job
from tests.jobs.test_api import client_for

from .conftest import WorkerProcess, wait_until
from .k8s_fake import FakeKubernetes

if not shutil.which("sbatch"):
    pytest.skip("no Slurm here: run scripts/slurm-dev-cluster", allow_module_level=True)

pytestmark = [pytest.mark.worker, pytest.mark.slurm, pytest.mark.django_db(transaction=True)]

SLURM_TOOLS = ("sbatch", "squeue", "sacct", "scontrol", "scancel", "sinfo", "sacctmgr")
HANG_S = 60  # the hung cluster's command timeout: how long each of its calls is stuck


class HungController:
    """Takes Slurm's connections and never answers them."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.fixture
def hung_slurm(h100):
    controller = HungController()
    root = Path(tempfile.mkdtemp(prefix="aif-hung-slurm-"))
    root.chmod(0o755)  # the jobs' owners run sbatch from here, through sudo
    etc, bin_dir = root / "etc", root / "bin"
    etc.mkdir()
    bin_dir.mkdir()
    for path in Path("/etc/slurm").iterdir():
        if path.is_file() and path.name != "slurmdbd.conf":
            shutil.copy(path, etc / path.name)
    conf = (etc / "slurm.conf").read_text()
    conf = re.sub(r"^SlurmctldHost=.*$", "SlurmctldHost=localhost(127.0.0.1)", conf, flags=re.M)
    conf = re.sub(r"^SlurmctldPort=.*$", f"SlurmctldPort={controller.port}", conf, flags=re.M)
    conf = re.sub(r"^MessageTimeout=.*\n", "", conf, flags=re.M) + f"MessageTimeout={HANG_S + 30}\n"
    (etc / "slurm.conf").write_text(conf)
    for path in etc.iterdir():
        path.chmod(0o644)
    for tool in SLURM_TOOLS:
        wrapper = bin_dir / tool
        wrapper.write_text(f'#!/bin/sh\nSLURM_CONF={etc}/slurm.conf exec {shutil.which(tool)} "$@"\n')
        wrapper.chmod(0o755)
    cluster = Cluster.objects.create(
        slug="slurm-hung",
        name="Slurm (hung)",
        kind="slurm",
        connection={
            "bin_dir": str(bin_dir),
            "job_root": str(root / "jobs"),
            "job_group": "aifactory-portal",
            "command_timeout": HANG_S,
        },
    )
    Pool.objects.create(cluster=cluster, gpu_type=h100, capacity=8, partition="gpu")
    controller.bin_dir = bin_dir
    yield controller
    controller.close()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def k8s(a100):
    fake = FakeKubernetes().start_server()
    connection = {"kubeconfig": yaml.safe_dump(fake.kubeconfig()), "allow_any_image": True}
    cluster = Cluster.objects.create(slug="k8s", name="Kubernetes", kind="kubernetes", connection=connection)
    cluster.full_clean()
    Pool.objects.create(cluster=cluster, gpu_type=a100, capacity=8)
    yield fake
    fake.stop_server()


@pytest.fixture
def workers(tmp_path):
    """A worker per queue, as a site runs them; the scheduler beside the default queue's."""
    redis.Redis.from_url(settings.CELERY_BROKER_URL).flushdb()
    started = [
        WorkerProcess(tmp_path, queue, queues=[queue], beat=queue == "default", concurrency=2)
        for queue in settings.FACTORY_QUEUES
    ]
    for worker in started:
        worker.start()
    for worker in started:
        wait_until(lambda w=worker: " ready." in w.log(), 60, lambda w=worker: f"{w.name}:\n{w.log()}")
    yield {worker.name: worker for worker in started}
    for worker in started:
        worker.kill()
    redis.Redis.from_url(settings.CELERY_BROKER_URL).flushdb()


def submit(api, gpu_type: str, name: str) -> int:
    body = {
        "tenant": "demo-lab",
        "name": name,
        "command": "echo ok",
        "image": "busybox:1.36",
        "gpu_type": gpu_type,
        "gpu_count": 1,
        "time_limit_minutes": 5,
        "cpus": 1,
        "memory_gb": 1,
    }
    response = api.post("/api/v1/jobs/", body, format="json")
    assert response.status_code == 202, response.content
    return response.json()["id"]


def running(program: Path) -> int:
    """How many processes run `program` (sudo's, for a job's owner, included)."""
    count = 0
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):  # a process that ended meanwhile
            count += str(program).encode() in cmdline.read_bytes()
    return count


def states(ids) -> dict[int, str]:
    return dict(Job.objects.filter(pk__in=ids).values_list("pk", "state"))


def test_a_hung_slurm_controller_delays_neither_kubernetes_dispatch_nor_metering(
    hung_slurm, k8s, workers, owner, quotas
):
    from billing.tasks import meter

    slurm_worker = workers["dispatch-slurm"]
    api = client_for(owner)
    # Four Slurm jobs: one dispatch task each, more than the Slurm workers' two processes.
    stuck = [submit(api, "h100", f"slurm-{i}") for i in range(4)]
    sbatch = hung_slurm.bin_dir / "sbatch"
    wait_until(lambda: running(sbatch) >= 2, 60, lambda: f"sbatch to hang:\n{slurm_worker.log()[-3000:]}")

    k8s_jobs = [submit(api, "a100", f"k8s-{i}") for i in range(4)]
    wait_until(
        lambda: set(states(k8s_jobs).values()) == {JobState.SUBMITTED},
        30,
        lambda: f"Kubernetes dispatch ({states(k8s_jobs)}):\n{workers['dispatch-kubernetes'].log()[-3000:]}",
    )
    meter_task = meter.delay()
    wait_until(
        lambda: re.search(rf"billing\.tasks\.meter\[{meter_task.id}\] succeeded", workers["metering"].log()),
        30,
        lambda: f"metering to run:\n{workers['metering'].log()[-3000:]}",
    )
    # All of that while the Slurm dispatchers were still stuck in their first calls.
    assert set(states(stuck).values()) == {JobState.ADMITTED}
    assert "did not answer" not in slurm_worker.log()
    assert sorted(
        job.split("/")[1] for job in Job.objects.filter(pk__in=k8s_jobs).values_list("external_id", flat=True)
    ) == sorted(name for (_, name) in k8s.jobs)
