"""Jobs on several nodes at once, and jobs that fit no node, on the real Slurm of
scripts/slurm-dev-cluster (see tests/integration/test_slurm.py for its layout and for how the
adapter's tools run as the portal's own account)."""

from __future__ import annotations

import pytest

from factory.tasks import refresh_health
from jobs.models import Job
from tests.jobs.test_api import URL, body, client_for

from . import test_slurm

pytestmark = [pytest.mark.slurm, pytest.mark.django_db]

# The Slurm fixtures of test_slurm.py, used here as they are there.
as_the_portal_account = test_slurm.as_the_portal_account
shared_dir = test_slurm.shared_dir
slurm_cluster = test_slurm.slurm_cluster


def test_a_job_asking_more_memory_than_any_node_has_is_refused_at_submission(slurm_cluster, owner, h100):
    """The form's default of 16 GB on nodes of 16,000 MB: Slurm would refuse it ("Memory
    specification can not be satisfied") after the portal admitted it. The portal reads the nodes'
    memory from Slurm with the cluster's health and refuses it at once, saying why."""
    assert refresh_health(slurm_cluster).ok
    api = client_for(owner)
    response = api.post(URL, body(gpu_count=1, memory_gb=16), format="json")
    assert response.status_code == 400, response.content
    assert response.json()["memory_gb"] == ["Needs 16 GB per node; h100 nodes of slurm-local have 15.6 GB."]
    assert not Job.objects.exists()
    assert api.post(URL, body(gpu_count=1, memory_gb=15), format="json").status_code == 202


# --- gangs: partition "gang", nodes gpu2 and gpu3 with 4 fake h100 each ------------------------------

RENDEZVOUS = """\
import os, socket, sys, time

rank, world = int(os.environ["NODE_RANK"]), int(os.environ["WORLD_SIZE"])
address = (os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]))
if os.environ.get("FAIL_RANK") == str(rank):
    print(f"rank {rank} gives up", flush=True)
    sys.exit(3)
if rank == 0:
    server = socket.create_server(address)
    server.settimeout(120)
    peers = [server.accept()[0] for _ in range(world - 1)]
    met = sorted([0] + [int(peer.recv(16)) for peer in peers])
    for peer in peers:
        peer.sendall(b"go")
else:
    deadline = time.monotonic() + 120
    while True:
        try:
            peer = socket.create_connection(address, timeout=5)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    peer.sendall(str(rank).encode())
    assert peer.recv(16) == b"go"
    met = "rank 0"
print(f"rank {rank} of {world} met {met} at {address[0]}:{address[1]} on {os.environ['SLURMD_NODENAME']}"
      f" nodes={os.environ['FACTORY_NODE_LIST']} gpus={os.environ['CUDA_VISIBLE_DEVICES']}", flush=True)
print(f"finished at {time.time():.3f}", flush=True)
"""


@pytest.fixture
def gang_cluster(db, h100, settings, shared_dir):
    """The dev cluster's gang partition, its node shape and topology read from Slurm as a health
    check does."""
    from factory.models import Cluster, Pool

    settings.FACTORY_SLURM_JOB_ROOT = shared_dir / "slurm-jobs"
    cluster = Cluster.objects.create(
        slug="slurm-gang",
        name="Slurm gangs",
        kind="slurm",
        region="local",
        # The dev cluster's topology.conf puts gpu2 and gpu3 under one switch.
        connection={"job_group": test_slurm.PORTAL_GROUP, "gang_switch_wait_minutes": 5},
    )
    pool = Pool.objects.create(cluster=cluster, gpu_type=h100, capacity=8, partition="gang")
    health = refresh_health(cluster)
    assert health.ok, health.message
    if "gang/h100" not in {p.gpu_type for p in health.pools}:
        pytest.fail(
            "the dev cluster has no partition gang (nodes gpu2, gpu3): run scripts/slurm-dev-cluster start"
        )
    pool.refresh_from_db()
    assert (pool.node_count, pool.node_gpus, pool.node_cpus, pool.node_memory_mb) == (2, 4, 16, 16000)
    # topology.conf: gpu2 and gpu3 under leaf switch leaf2 (leaf1 and the spine hold no gang node).
    assert pool.topology == {"level": "switch", "domains": {"leaf2": ["gpu2", "gpu3"]}}
    return cluster


@pytest.fixture
def gang_job(gang_cluster, tenant, owner, h100, shared_dir):
    """A gang submitted and admitted as in production (admission chooses the cluster and the
    switch); the tests dispatch it themselves."""
    from jobs import submission
    from quotas.admission import admit_pending
    from quotas.models import Quota

    Quota.objects.create(tenant=tenant, gpu_type=h100, nominal=8)

    script = shared_dir / "rendezvous.py"
    script.write_text(RENDEZVOUS)
    script.chmod(0o644)

    def make(**overrides):
        spec = {
            "name": "gang-test",
            "command": f"python3 {script}",
            "gpu_type": h100,
            "nodes": 2,
            "gpus_per_node": 2,
            "time_limit_minutes": 5,
            "cpus": 1,
            "memory_gb": 1,
            **overrides,
        }
        job, _ = submission.submit(tenant=tenant, owner=owner, spec=spec)
        assert admit_pending().admitted == 1
        job.refresh_from_db()
        return job

    return make


def rank_log(job, rank: int) -> str:
    return job.cluster.adapter().logs(job, 0, rank).text


def test_a_two_node_gang_meets_by_rendezvous_and_finishes_together(gang_job, gang_cluster, owner):
    from jobs.tasks import dispatch_jobs

    job = gang_job()
    assert (job.cluster, job.topology_domain) == (gang_cluster, "leaf2")
    assert job.events.filter(
        message="Admitted: 2 nodes × 2 h100 on slurm-gang (least loaded), under one switch: leaf2"
    ).exists()
    dispatch_jobs([job.pk])
    job.refresh_from_db()
    args = test_slurm.scontrol_job(job.external_id)
    assert args["NumNodes"] in ("2", "2-2") and "gres:gpu:h100:2" in args["TresPerNode"], args
    assert args["Switches"] == "1@00:05:00"  # all its nodes under one switch, if within 5 min
    job = test_slurm.run_to(job, lambda j: j.is_terminal, timeout=90)
    assert (job.state, job.exit_code) == ("succeeded", 0), (job.reason, rank_log(job, 0), rank_log(job, 1))
    assert job.ran_on == ["gpu2", "gpu3"]
    first, second = rank_log(job, 0), rank_log(job, 1)
    port = 20000 + int(job.external_id) % 20000
    assert first.startswith(f"rank 0 of 2 met [0, 1] at 127.0.0.1:{port} on gpu2 nodes=gpu2,gpu3 gpus=0,1\n")
    assert second.startswith(f"rank 1 of 2 met rank 0 at 127.0.0.1:{port} on gpu3 nodes=gpu2,gpu3 gpus=0,1\n")
    ends = [float(log.rsplit("finished at ", 1)[1]) for log in (first, second)]
    assert abs(ends[0] - ends[1]) < 5

    api = client_for(owner)
    assert api.get(f"{URL}{job.pk}/logs/?rank=1").json()["text"] == second
    assert api.get(f"{URL}{job.pk}/logs/").json()["text"] == first
    assert api.get(f"{URL}{job.pk}/logs/?rank=2").status_code == 400
    shown = api.get(f"{URL}{job.pk}/").json()
    assert (shown["nodes"], shown["gpus_per_node"], shown["gpu_count"], shown["ran_on"]) == (
        2,
        2,
        4,
        ["gpu2", "gpu3"],
    )


def test_slurm_is_asked_for_one_switch_only_for_a_gang_admission_placed_under_one(gang_cluster, gang_job):
    """A gang placed across switches (or a job on one node) would only wait for a switch Slurm
    cannot give it in the time admission looked at."""
    job = gang_job(name="gang-no-wait")
    adapter = gang_cluster.adapter()
    assert "--switches=1@5" in adapter.placement_args(job)
    job.topology_domain = ""
    assert not [arg for arg in adapter.placement_args(job) if arg.startswith("--switches")]


def test_a_rank_that_exits_3_fails_the_gang_with_exit_code_3(gang_job):
    from jobs.tasks import dispatch_jobs

    job = gang_job(name="gang-fails", env={"FAIL_RANK": "1"})
    dispatch_jobs([job.pk])
    job = test_slurm.run_to(job, lambda j: j.is_terminal, timeout=90)
    assert (job.state, job.exit_code) == ("failed", 3), job.reason
    assert rank_log(job, 1).startswith("rank 1 gives up\n")
    assert "rank 0 of 2 met" not in rank_log(job, 0)  # stopped, never met anyone


def test_cancel_stops_every_rank(gang_job, shared_dir):
    import os
    import time

    from jobs import lifecycle
    from jobs.tasks import cancel_job, dispatch_jobs

    pids = shared_dir / "pids"
    pids.mkdir(mode=0o777)
    pids.chmod(0o777)
    job = gang_job(name="gang-cancel", command=f"echo $$ > {pids}/rank-$NODE_RANK; exec sleep 300")
    dispatch_jobs([job.pk])
    job = test_slurm.run_to(job, lambda j: j.state == "running")
    test_slurm.wait_until(lambda: len(list(pids.iterdir())) == 2, 30, "both ranks to start")
    ranks = [int(path.read_text()) for path in sorted(pids.iterdir())]

    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    assert all(alive(pid) for pid in ranks)
    lifecycle.cancel(job, job.owner)
    cancel_job(job.pk)
    job = test_slurm.run_to(job, lambda j: j.is_terminal, timeout=60)
    assert job.state == "cancelled"
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in ranks) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert not any(alive(pid) for pid in ranks)
