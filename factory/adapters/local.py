"""The `local` backend: each job is a process on this machine, supervised by a detached runner
(see local_runner.py) that holds simulated GPU slots, so a worker restart loses nothing.

It is for development (see local_guard.py). A root worker's jobs run as FACTORY_LOCAL_RUN_AS, in
working directories under FACTORY_LOCAL_WORK_ROOT which that user can reach; the job directories
(state, logs, the GPU slot table) stay the worker's alone under FACTORY_LOCAL_BACKEND_ROOT.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

from django.conf import settings

from . import local_guard, local_runner
from .base import (
    DISPATCH_KEY,
    DRAIN_REASON_PREFIX,
    Adapter,
    BackendError,
    BackendState,
    DrainTarget,
    Health,
    JobRejected,
    LogChunk,
    PoolHealth,
    StatusReport,
    dispatch_key,
    job_env,
    job_secrets,
    read_log_file,
)
from .connection import Connection


class LocalConnection(Connection):
    root: str | None = None  # where job directories live; defaults to FACTORY_LOCAL_BACKEND_ROOT


class LocalAdapter(Adapter):
    kind = "local"
    connection_class = LocalConnection
    delivers_secrets = True
    drains_whole_node = False

    @property
    def root(self) -> Path:
        base = Path(self.connection.root) if self.connection.root else settings.FACTORY_LOCAL_BACKEND_ROOT
        return base / self.cluster.slug

    @property
    def jobs_dir(self) -> Path:
        return self.root / "jobs"

    @property
    def slots_dir(self) -> Path:
        return self.root / "slots"

    def job_dir(self, job_or_key) -> Path:
        key = job_or_key if isinstance(job_or_key, str) else dispatch_key(job_or_key)
        if not DISPATCH_KEY.fullmatch(key):
            raise BackendError(f"{key!r} is not a dispatch key")  # a path fragment never gets through
        return self.jobs_dir / key

    # --- the protocol ---------------------------------------------------------------------------

    def submit(self, job) -> str:
        self._refuse_unless_allowed()
        job_dir = self.job_dir(job)
        if not job_dir.exists():
            self._create_job_dir(job, job_dir)
        self._ensure_runner(job_dir)
        return dispatch_key(job)

    def find(self, job) -> str | None:
        self._refuse_unless_allowed()
        # The job directory appears whole (made aside, then renamed): there, it was submitted.
        return dispatch_key(job) if self.job_dir(job).exists() else None

    def statuses(self, jobs) -> dict[str, StatusReport]:
        self._refuse_unless_allowed()
        reports = {}
        for job in jobs:
            key = dispatch_key(job)
            job_dir = self.job_dir(key)
            state = local_runner.read_json(job_dir / "state.json")
            if not state:
                reports[key] = StatusReport(key, BackendState.LOST, "no such job on this host")
                continue
            if state["state"] not in local_runner.TERMINAL and not local_runner.runner_alive(job_dir):
                # The runner died (host restart): a new one resumes waiting or records the loss.
                self._spawn_runner(job_dir)
            reports[key] = self._report(key, state)
        return reports

    def cancel(self, job) -> None:
        self._refuse_unless_allowed()
        job_dir = self.job_dir(job)
        if not job_dir.exists():
            return
        (job_dir / "cancel").touch()
        self._ensure_runner(job_dir)

    def logs(self, job, offset: int = 0, rank: int = 0) -> LogChunk:
        self._refuse_unless_allowed()
        job_dir = self.job_dir(job)
        state = local_runner.read_json(job_dir / "state.json").get("state")
        return read_log_file(job_dir / "output.log", offset, finished=state in local_runner.TERMINAL)

    def health(self) -> Health:
        self._refuse_unless_allowed()
        self._own_dir(self.root, 0o700)
        pools = tuple(
            PoolHealth(
                gpu_type=pool.gpu_type.slug,
                capacity=pool.capacity,
                in_use=local_runner.SlotTable(self.slots_dir, pool.gpu_type.slug, pool.capacity).in_use(),
            )
            for pool in self.cluster.pools.select_related("gpu_type")
        )
        return Health(ok=True, message=f"{len(pools)} pool(s) on this host", pools=pools)

    # --- simulated GPUs -----------------------------------------------------------------------
    # Each pool is a node of simulated GPUs, one per slot, named "<cluster>-<GPU type>"; the GPU
    # exporter simulator (fleet.simulator) serves their telemetry from the slot tables.

    def node_name(self, gpu_type: str) -> str:
        return f"{self.cluster.slug}-{gpu_type}"

    def slot_table(self, gpu_type: str) -> local_runner.SlotTable:
        pool = next(
            (p for p in self.cluster.pools.select_related("gpu_type") if p.gpu_type.slug == gpu_type), None
        )
        if pool is None:
            raise BackendError(f"cluster {self.cluster.slug} has no {gpu_type} GPUs")
        return local_runner.SlotTable(self.slots_dir, gpu_type, pool.capacity)

    def simulated_nodes(self) -> list[tuple[str, str, int, Path]]:
        """(node name, GPU type, GPUs, slot table file) of each pool."""
        return [
            (
                self.node_name(p.gpu_type.slug),
                p.gpu_type.slug,
                p.capacity,
                self.slots_dir / f"{p.gpu_type.slug}.json",
            )
            for p in self.cluster.pools.select_related("gpu_type")
        ]

    def drain(self, target: DrainTarget, reason: str) -> None:
        self._refuse_unless_allowed()
        table = self.slot_table(target.gpu_type)
        drained = table.drained()
        for slot in target.gpus:
            if slot not in drained:  # someone else's reason stays, as the drain it names does
                table.set_drained(slot, reason)

    def resume(self, target: DrainTarget) -> bool:
        self._refuse_unless_allowed()
        table = self.slot_table(target.gpu_type)
        drained = table.drained()
        resumed = True
        for slot in target.gpus:
            if slot not in drained:
                continue
            if not drained[slot].startswith(DRAIN_REASON_PREFIX):
                resumed = False  # taken out by someone else: theirs to put back
                continue
            table.set_drained(slot, None)
        return resumed

    def gpu_jobs(self) -> dict[tuple[str, int], str]:
        jobs = {}
        for node, gpu_type, capacity, _ in self.simulated_nodes():
            table = local_runner.SlotTable(self.slots_dir, gpu_type, capacity)
            for slot, key in table.holders().items():
                jobs[node, slot] = key
        return jobs

    # --- helpers --------------------------------------------------------------------------------

    @staticmethod
    def _refuse_unless_allowed() -> None:
        # Checked by every verb rather than when the adapter is made: adapters are made in loops
        # over all clusters (dispatch of a mixed batch, quota limits), which one refusal must not stop.
        if not local_guard.allowed():
            raise BackendError(local_guard.REFUSED)

    @staticmethod
    def _own_dir(path: Path, mode: int) -> None:
        try:
            local_runner.own_dir(path, mode)
        except OSError as exc:
            raise BackendError(f"local backend directory {path}: {exc}") from None

    @staticmethod
    def _run_as() -> dict | None:
        """The user a root worker's jobs run as; None when the worker is not root, whose jobs run
        as the worker's own user (only root can give them another)."""
        if os.geteuid() != 0:
            return None
        name = settings.FACTORY_LOCAL_RUN_AS
        try:
            user = pwd.getpwnam(name)
        except KeyError:
            raise BackendError(
                f"FACTORY_LOCAL_RUN_AS is {name!r}, which is not a user on this host: create it "
                "(scripts/local-backend-user) or name another unprivileged user"
            ) from None
        if user.pw_uid == 0 or user.pw_gid == 0:
            raise BackendError(f"FACTORY_LOCAL_RUN_AS must name an unprivileged user, not {name!r}")
        return {"user": name, "uid": user.pw_uid, "gid": user.pw_gid}

    def _create_job_dir(self, job, job_dir: Path) -> None:
        pool = self.pool_for(job)
        if pool is None:
            raise BackendError(f"cluster {self.cluster.slug} has no {job.gpu_type.slug} GPUs")
        env, secrets = job_env(job), job_secrets(job)
        if "\x00" in job.command or any("\x00" in value for value in [*env.values(), *secrets.values()]):
            raise JobRejected("the command or an environment variable holds a NUL character")
        run_as = self._run_as()
        work_root = settings.FACTORY_LOCAL_WORK_ROOT  # job keys are unique across clusters
        self._own_dir(self.root, 0o700)
        self._own_dir(work_root, 0o711)
        if run_as and not _reachable(work_root, run_as["uid"], run_as["gid"]):
            raise BackendError(
                f"jobs run as {run_as['user']} cannot reach {work_root}: FACTORY_LOCAL_WORK_ROOT "
                "must be a directory that user can pass through"
            )
        self.jobs_dir.mkdir(exist_ok=True)
        staging = self.jobs_dir / f".{job_dir.name}.{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        spec = {
            "uid": str(job.uid),
            "key": job_dir.name,
            "name": job.name,
            "gpu_type": job.gpu_type.slug,
            "gpu_count": job.gpu_count,
            "time_limit_seconds": job.time_limit_minutes * 60,
            "env": env,
            "slots_dir": str(self.slots_dir),
            "slots_total": pool.capacity,
            "run_as": run_as,
            "work_dir": str(work_root / job_dir.name),
        }
        # The command as given; the runner hands it to bash -c as one argument.
        (staging / "script.sh").write_text(job.command)
        (staging / "spec.json").write_text(json.dumps(spec))
        if secrets:  # apart from the spec, so that nothing but the runner ever reads them
            local_runner.write_json_atomic(staging / local_runner.SECRETS_FILE, secrets, mode=0o600)
        local_runner.write_json_atomic(staging / "state.json", {"state": "queued", "reason": ""})
        try:
            os.rename(staging, job_dir)  # atomic: a concurrent submit of the same uid loses here
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            if not job_dir.exists():
                raise

    def _ensure_runner(self, job_dir: Path) -> None:
        state = local_runner.read_json(job_dir / "state.json").get("state")
        if state not in local_runner.TERMINAL and not local_runner.runner_alive(job_dir):
            self._spawn_runner(job_dir)

    @staticmethod
    def _spawn_runner(job_dir: Path) -> None:
        # The runner forks and its parent exits at once: waiting here reaps it, leaving no zombie.
        subprocess.run(
            [sys.executable, "-m", local_runner.__name__, str(job_dir)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=True,
            start_new_session=True,
            env=dict(local_runner.BASE_ENV),  # the worker's secrets stay with the worker
            cwd=str(Path(local_runner.__file__).resolve().parents[2]),
        )

    @staticmethod
    def _report(external_id: str, state: dict) -> StatusReport:
        return StatusReport(
            external_id=external_id,
            state=BackendState(state["state"]),
            reason=state.get("reason", ""),
            started_at=_parse_time(state.get("started_at")),
            ended_at=_parse_time(state.get("ended_at")),
            exit_code=state.get("exit_code"),
            platform_fault=bool(state.get("platform_fault")),
        )


def _parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _reachable(path: Path, uid: int, gid: int) -> bool:
    """Whether a process of uid:gid, with no other groups, may pass through every directory down
    to `path` (and so open its job's working directory by its absolute path, as HOME)."""
    for directory in (path, *path.parents):
        info = directory.stat()
        bit = 0o100 if info.st_uid == uid else 0o010 if info.st_gid == gid else 0o001
        if not info.st_mode & bit:
            return False
    return True
