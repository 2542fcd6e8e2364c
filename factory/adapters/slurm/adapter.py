"""The job protocol on Slurm. Every job runs as its owner's own POSIX user (set by a platform
admin, factory.models.Identity), never as the portal's account or anyone else's: what acts for the
job runs through `sudo -n -u <owner>` (cli.py). User input reaches Slurm only as validated option
values and as the body of a batch script whose environment values are shell-quoted.

- submit: the job's directory made by its owner (scripts/slurm-job-dir, which also writes the
  job's secrets, from stdin, to a file only the owner may read), then `sbatch --parsable` as the
  owner, script on stdin (the secrets file's path in it, never a secret), the job uid in
  `--comment` so that a retried dispatch finds the job (a marker file first, then squeue, then
  sacct) instead of submitting again.
- statuses: one `squeue --json` per sync for all jobs (22.05 ignores its filters: filter here), and
  one `sacct -P` for those that ended or left squeue (exit codes from its text field; the JSON ones
  are wrong in 22.05).
- cancel: `scancel` as the Slurm job's user; logs: the job's output file, read from an offset
  while it grows, as a member of the portal's group.
- arrays: the first attempts of an array's tasks are one Slurm job array, made by one
  `sbatch --array=<indexes>%<limit>` (its uid in `--comment`, found again like a job's), whose
  script sets each task's own variables by $SLURM_ARRAY_TASK_ID. Tasks the portal has not admitted
  yet wait in it held (`--hold`); admitting them is `scontrol release <id>_[<indexes>]`, as the
  portal's account (a Slurm Operator). A task is "<array job id>_<index>" to squeue, sacct and
  scancel; `scancel <id>` stops the whole array.

Files, under `<job root>/<cluster slug>/` (0711: owners pass through it to their directories):
- `jobs/<dispatch key>/`: the job's working directory and its output.log, both the owner's, mode
  0710 and 0640, and of the portal's group (`job_group`), inherited from `jobs/`. That one is
  setgid and sticky, 3713: owners add their directories to it but cannot list it or remove
  another's, the portal's group passes through it, and no user outside that group can enter
  another's directory.
- `dispatch/<dispatch key>`: the portal's own marker (0700), made before anything reaches Slurm and
  then holding the Slurm job id.
- an array's directory and marker are named by the array's uid; its tasks write `task-<index>.log`.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import re
import shlex
import time
import uuid
from pathlib import Path

from django.conf import settings

from factory.models import Identity

from ..base import (
    DISPATCH_KEY,
    DRAIN_REASON_PREFIX,
    POSIX_USERNAME,
    Adapter,
    BackendError,
    BackendState,
    BackendUnavailable,
    DrainTarget,
    GpuLimit,
    Health,
    JobRejected,
    LogChunk,
    StatusReport,
    dispatch_key,
    index_ranges,
    job_env,
    job_secrets,
    read_log_file,
)
from .accounts import SlurmAccounts
from .cli import (
    NODE_FIELDS,
    NODE_NOT_OURS,
    SAFE_TOKEN,
    SlurmCLI,
    classify_error,
    epoch,
    expand_hostlist,
    gpu_capacity,
    job_gpu_indexes,
    job_keys,
    job_state,
    local_time,
    node_down,
    node_info,
    node_switches,
    number,
    sacct_exit_code,
    slurm_reason,
    wait_status,
)
from .connection import SlurmConnection

log = logging.getLogger(__name__)

JOB_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
COMMENT_PREFIX = "aif:"
JOB_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

STATES: dict[str, BackendState] = {
    "PENDING": BackendState.QUEUED,
    "CONFIGURING": BackendState.QUEUED,
    "REQUEUED": BackendState.QUEUED,
    "REQUEUE_HOLD": BackendState.QUEUED,
    "REQUEUE_FED": BackendState.QUEUED,
    "RESV_DEL_HOLD": BackendState.QUEUED,
    "RUNNING": BackendState.RUNNING,
    "COMPLETING": BackendState.RUNNING,
    "RESIZING": BackendState.RUNNING,
    "SUSPENDED": BackendState.RUNNING,
    "STOPPED": BackendState.RUNNING,
    "SIGNALING": BackendState.RUNNING,
    "STAGE_OUT": BackendState.RUNNING,
    "COMPLETED": BackendState.SUCCEEDED,
    "FAILED": BackendState.FAILED,
    "CANCELLED": BackendState.CANCELLED,
    "TIMEOUT": BackendState.TIMED_OUT,
    "DEADLINE": BackendState.TIMED_OUT,
    "NODE_FAIL": BackendState.FAILED,
    "BOOT_FAIL": BackendState.FAILED,
    "OUT_OF_MEMORY": BackendState.FAILED,
    "PREEMPTED": BackendState.FAILED,
    "SPECIAL_EXIT": BackendState.FAILED,
    "REVOKED": BackendState.CANCELLED,
}

# Why Slurm ended a job, in words, where its state alone does not say it.
END_REASONS = {
    "NODE_FAIL": "a node of the cluster failed",
    "BOOT_FAIL": "a node failed to boot",
    "OUT_OF_MEMORY": "out of memory",
    "PREEMPTED": "preempted by Slurm",
    "DEADLINE": "the job's deadline passed",
    "TIMEOUT": "time limit reached",
    "SUSPENDED": "suspended by the cluster",
}

# Endings caused by the platform rather than the job: recorded, not charged.
PLATFORM_FAULTS = frozenset({"NODE_FAIL", "BOOT_FAIL"})

# Slurm's pending reasons, as a researcher would want to read them.
PENDING_REASONS = {
    "None": "queued at the cluster",
    "Resources": "waiting for free GPUs on the cluster",
    "Priority": "queued behind higher-priority jobs on the cluster",
    "Dependency": "waiting for the jobs it depends on",
    "BeginTime": "waiting for its start time",
    "JobHeldUser": "held by its owner",
    "JobHeldAdmin": "held by a cluster administrator",
    "AssocGrpGRES": "the tenant's GPU limit on this cluster is reached",
    "AssocGrpGRESMinutes": "the tenant's GPU-minutes on this cluster are used up",
    "AssocGrpGRESRunMinutes": "the tenant's running GPU-minutes on this cluster are at their limit",
    "AssocMaxGRESPerJob": "the job asks for more GPUs than the tenant may use in one job",
    "AssocGrpCpuLimit": "the tenant's CPU limit on this cluster is reached",
    "AssocGrpJobsLimit": "the tenant's limit of running jobs on this cluster is reached",
    "AssocGrpSubmitJobsLimit": "the tenant's limit of queued jobs on this cluster is reached",
    "QOSMaxGRESPerUser": "the per-user GPU limit is reached",
    "QOSGrpGRES": "the quality-of-service GPU limit is reached",
    "PartitionTimeLimit": "its time limit exceeds the partition's maximum",
    "PartitionNodeLimit": "it asks for more nodes than the partition allows",
    "PartitionDown": "the partition is down",
    "PartitionInactive": "the partition is inactive",
    "ReqNodeNotAvail": "the nodes it needs are unavailable (down, drained or reserved)",
    "Reservation": "waiting for its reservation",
    "NodeDown": "a node it needs is down",
    "BadConstraints": "its constraints cannot be met",
    "Licenses": "waiting for licenses",
    "launch failed requeued held": "its launch failed; held after requeue",
    "JobArrayTaskLimit": "waiting for the array's limit of tasks at once",
}
# A task of an array that the portal has not handed over yet waits held in the Slurm array
# (JobHeldUser): never the reason a task the portal handed over gives.
HELD_FOR_THE_PORTAL = "JobHeldUser"


class SlurmAdapter(Adapter):
    kind = "slurm"
    connection_class = SlurmConnection
    keeps_tenant_limits = True
    delivers_secrets = True

    def __init__(self, cluster) -> None:
        super().__init__(cluster)
        self.cli = SlurmCLI(
            cluster.slug, bin_dir=self.connection.bin_dir, timeout=self.connection.command_timeout
        )
        self.accounts = SlurmAccounts(self.cli, self.connection, cluster)

    # --- paths and names ------------------------------------------------------------------------

    @property
    def job_root(self) -> Path:
        base = self.connection.job_root or settings.FACTORY_SLURM_JOB_ROOT
        return Path(base) / self.cluster.slug

    def job_dir(self, job) -> Path:
        return self.job_root / "jobs" / dispatch_key(job)

    def dispatch_marker(self, job) -> Path:
        return self.job_root / "dispatch" / dispatch_key(job)

    def partition_for(self, job) -> str | None:
        pool = self.pool_for(job)
        partition = (pool.partition if pool else "") or self.connection.default_partition
        if partition and not SAFE_TOKEN.fullmatch(partition):
            raise JobRejected(f"{partition!r} is not a valid partition name")
        return partition or None

    def posix_user(self, job) -> str:
        """The POSIX user the job runs as: its owner's, as a platform admin set it. Never the
        portal's own account, root, or anyone else's: without it the job does not run."""
        name = Identity.objects.posix_username(job.owner_id)
        if not name:
            raise JobRejected(
                "Slurm runs each job as its owner's own POSIX account, and none is set for the job's "
                "owner (a platform admin sets it)"
            )
        if not POSIX_USERNAME.fullmatch(name):
            raise JobRejected(f"{name!r} is not a POSIX user name")
        try:
            uid = pwd.getpwnam(name).pw_uid
        except KeyError:
            raise JobRejected(f"the owner's POSIX account {name} does not exist on the submit host") from None
        if uid in (0, os.geteuid()):
            raise JobRejected(f"{name} is a privileged account: jobs never run as it")
        return name

    # --- the protocol ---------------------------------------------------------------------------

    def submit(self, job) -> str:
        existing = self.find(job)
        if existing:
            return existing
        user = self.posix_user(job)
        job_dir = self.job_dir(job)
        args = self.sbatch_args(job, job_dir)
        secrets = job_secrets(job)
        script = self.batch_script(job, job_dir if secrets else None)
        self.prepare_job_root()
        marker = self.dispatch_marker(job)
        marker.touch(mode=0o600)
        self.make_job_dir(job_dir, user, secrets)
        external_id = self.sbatch(args, script, user, job.tenant.slug)
        marker.write_text(external_id)
        return external_id

    def sbatch(self, args: list[str], script: str, user: str, tenant: str) -> str:
        """`sbatch` as the job's owner; the tenant's account is made once when Slurm does not
        know it yet. Returns the Slurm job id."""
        try:
            out = self.cli.run(["sbatch", *args], stdin=script, as_user=user)
        except JobRejected as exc:
            if "invalid account" not in str(exc).lower() or not self.accounts.ensure(tenant, user):
                raise
            out = self.cli.run(["sbatch", *args], stdin=script, as_user=user)
        external_id = out.strip().split(";", 1)[0]
        if not external_id.isdigit():
            raise BackendError(f"sbatch answered {out.strip()!r}, not a job id")
        return external_id

    # --- arrays ---------------------------------------------------------------------------------

    native_arrays = True

    @staticmethod
    def array_key(array) -> str:
        key = str(array.uid)
        if not DISPATCH_KEY.fullmatch(key):
            raise BackendError(f"{key!r} is not an array's uid")
        return key

    def array_dir(self, array) -> Path:
        return self.job_root / "jobs" / self.array_key(array)

    def array_marker(self, array) -> Path:
        return self.job_root / "dispatch" / self.array_key(array)

    @staticmethod
    def is_array_task(job) -> bool:
        """A first attempt of a task of an array: it belongs in the Slurm array (if its array has
        one; a task whose array Slurm could not hold was submitted as a job of its own)."""
        return getattr(job, "array_id", None) is not None and getattr(job, "attempt", 0) == 0

    def runs_as_array(self, array) -> bool:
        """Slurm takes array indexes below its MaxArraySize (1001 unless the site sets more)."""
        highest = int(re.findall(r"\d+", array.indexes)[-1])
        return highest < self.cli.max_array_size()

    def find_array(self, array) -> str | None:
        """The Slurm job array already made for this array, if a dispatch got that far."""
        return self._find_marked(self.array_marker(array), self.array_key(array), array.name)

    def submit_array(self, array, tasks, members) -> tuple[str, dict[int, str]]:
        """Release `tasks` in the array's Slurm array, made first (with one sbatch, its other
        tasks held) if no dispatch made it yet."""
        user = self.posix_user(tasks[0])
        external_id = self.find_array(array)
        made_whole = False
        if external_id is None:
            external_id, made_whole = self.make_array(array, tasks, members(), user)
        if not made_whole:
            indexes = index_ranges(int(task.array_index) for task in tasks)
            self.cli.run(["scontrol", "release", f"{external_id}_[{indexes}]"])
        return external_id, {task.pk: f"{external_id}_{int(task.array_index)}" for task in tasks}

    def make_array(self, array, tasks, members, user: str) -> tuple[str, bool]:
        """One `sbatch --array` of every task that may still run (`members`), those not in
        `tasks` held. Returns its job id and whether none was held."""
        members = members or list(tasks)
        wanted = {task.pk for task in tasks}
        held = any(member.pk not in wanted for member in members)
        self.prepare_job_root()
        marker = self.array_marker(array)
        if self.claim_marker(marker):  # a dead dispatcher's: it may have got as far as sbatch
            found = self._find_by_comment(self.array_key(array), array.name)
            if found:
                marker.write_text(found)
                return found, False
        array_dir = self.array_dir(array)
        indexes = [int(member.array_index) for member in members]
        args = self.sbatch_args(tasks[0], array_dir, output="task-%a.log", key=self.array_key(array))
        args.append(
            f"--array={index_ranges(indexes)}" + (f"%{int(array.max_running)}" if array.max_running else "")
        )
        if held:
            args.append("--hold")
        secrets = job_secrets(tasks[0])
        script = self.array_script(tasks[0], members, array_dir if secrets else None)
        try:
            self.make_job_dir(array_dir, user, secrets)
            external_id = self.sbatch(args, script, user, tasks[0].tenant.slug)
        except BackendUnavailable:
            raise  # it may have reached Slurm: the claim stays, for the comment to be looked up
        except BackendError:
            marker.unlink(missing_ok=True)  # refused: nothing reached Slurm
            raise
        marker.write_text(external_id)
        return external_id, not held

    def claim_marker(self, marker: Path) -> bool:
        """Make the marker, or take it over from a dispatcher that died holding it (returns
        whether it did). One younger than a dispatcher's longest submission is another's, at work
        now: retry later."""
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            return False
        except FileExistsError:
            pass
        age = time.time() - marker.stat().st_mtime
        if age < 2 * self.connection.command_timeout + 5:
            raise BackendUnavailable("another dispatcher is submitting this array")
        os.utime(marker)
        return True

    @staticmethod
    def array_script(first, members, secrets_dir: Path | None = None) -> str:
        """The array's batch script: what every task shares exported once, each task's own
        variables (its uid, index and sweep parameters) by $SLURM_ARRAY_TASK_ID."""
        envs = [job_env(member) for member in members]
        common = {
            name: value for name, value in envs[0].items() if all(env.get(name) == value for env in envs[1:])
        }
        lines = ["#!/bin/bash", f"export PATH={JOB_PATH}"]
        lines += [f"export {name}={shlex.quote(value)}" for name, value in common.items()]
        lines.append('case "$SLURM_ARRAY_TASK_ID" in')
        for member, env in zip(members, envs, strict=True):
            own = " ".join(
                f"{name}={shlex.quote(value)}" for name, value in env.items() if name not in common
            )
            lines.append(f"{int(member.array_index)}) {f'export {own}' if own else ':'} ;;")
        lines += [
            '*) echo "factory: task $SLURM_ARRAY_TASK_ID is not one of this array\'s" >&2; exit 1 ;;',
            "esac",
        ]
        lines += SlurmAdapter.secrets_lines(secrets_dir)
        lines += ["", first.command, ""]
        return "\n".join(lines)

    def cancel_array(self, array, *, waiting_only: bool = False) -> None:
        """`scancel <array job id>` as its owner: every task; or (`waiting_only`) the tasks that
        still wait in it, held for the portal."""
        external_id = array.external_id or self.find_array(array)
        if not external_id:
            return
        users = self.cli.run(["squeue", "-h", "-j", external_id, "-o", "%u"], check=False).split()
        if not users:
            return
        as_user = None if users[0] == _worker_user() else users[0]
        state = ["--state=PENDING"] if waiting_only else []
        self.cli.run(["scancel", *state, external_id], as_user=as_user)

    def make_job_dir(self, job_dir: Path, user: str, secrets: dict[str, str]) -> None:
        """The job's directory and log, made by its owner; and its secrets, written by its owner
        to `secrets.env` (0600) from stdin, so that they are on no command line and in no file
        anyone but the owner may read (the portal's group included)."""
        helper = [self.connection.job_dir_helper, str(job_dir)]
        if not secrets:
            self.cli.run(helper, as_user=user)
            return
        assignments = "".join(f"{name}={shlex.quote(value)}\n" for name, value in secrets.items())
        self.cli.run([*helper, "--secrets"], stdin=assignments, as_user=user)

    def find(self, job) -> str | None:
        """The Slurm job already made for this portal job, if a previous dispatch got that far: a
        job of its own, or its task of the array's Slurm array."""
        found = self._find_marked(self.dispatch_marker(job), dispatch_key(job), job.name)
        if found is None and self.is_array_task(job):
            array = self.find_array(job.array)
            return f"{array}_{int(job.array_index)}" if array else None
        return found

    def _find_marked(self, marker: Path, key: str, name: str) -> str | None:
        if not marker.exists():
            return None  # the marker is made before sbatch runs: no earlier attempt got that far
        recorded = marker.read_text().strip()
        if recorded.isdigit():
            return recorded
        return self._find_by_comment(key, name)

    def _find_by_comment(self, key: str, name: str) -> str | None:
        """The Slurm job (or job array) submitted with `--comment=aif:<key>`: squeue, then sacct."""
        comment = f"{COMMENT_PREFIX}{key}"
        for entry in self.squeue():
            if entry.get("comment") == comment:
                return str(number(entry.get("array_job_id")) or entry["job_id"])
        if self.cli.accounting_enabled():
            out = self.sacct("-S", "now-14days", "--name", name, "-o", "JobID,Comment", check=False)
            for line in out.splitlines():
                job_id, _, found = line.partition("|")
                if found == comment:
                    return job_id.partition("_")[0]
        return None

    def prepare_job_root(self) -> None:
        """The cluster's job root with `jobs/` and `dispatch/` (see the top of this module), made
        on first use. `jobs/` appears whole: made aside, then renamed into place, so that no
        owner ever finds it without its group and mode."""
        root = self.job_root
        jobs, markers = root / "jobs", root / "dispatch"
        if jobs.is_dir() and markers.is_dir():
            return
        if not root.is_dir():
            root.mkdir(parents=True, exist_ok=True)
            root.chmod(0o711)
        markers.mkdir(mode=0o700, exist_ok=True)
        if jobs.is_dir():
            return
        draft = root / f".jobs-{uuid.uuid4().hex}"
        draft.mkdir(mode=0o700)
        try:
            os.chown(draft, -1, self.job_gid())
            draft.chmod(0o3713)  # after chown, which may clear the setgid bit
            draft.rename(jobs)
        except OSError:
            if not jobs.is_dir():
                raise
        finally:
            if draft.exists():
                draft.rmdir()

    def job_gid(self) -> int:
        group = self.connection.job_group
        if group is None:
            return os.getegid()
        try:
            return grp.getgrnam(group).gr_gid
        except KeyError:
            raise BackendError(f"there is no group {group} (connection setting job_group) here") from None

    def statuses(self, jobs) -> dict[str, StatusReport]:
        jobs = [j for j in jobs if j.external_id]
        if not jobs:
            return {}
        wanted = {j.external_id for j in jobs}
        live = {key: e for e in self.squeue() for key in job_keys(e) if key in wanted}
        reports: dict[str, StatusReport] = {}
        settled: list[str] = []
        for external_id in wanted:
            entry = live.get(external_id)
            if entry is None or STATES.get(job_state(entry), BackendState.QUEUED).is_terminal:
                settled.append(external_id)
            else:
                reports[external_id] = self.report_from_squeue(entry, external_id)
        if settled:
            reports.update(self.sacct_reports(settled, live))
        return reports

    def cancel(self, job) -> None:
        """`scancel` as the user the Slurm job runs as, the only one (but operators) who may
        cancel it. A job submitted as the worker itself (before jobs ran as their owners) is
        cancelled by the worker."""
        # Without an external id (an attempt whose dispatcher died before recording it), the
        # Slurm job is found by the dispatch key it was submitted under.
        external_id = job.external_id or self.find(job)
        if not external_id:
            return
        try:
            users = self.cli.run(["squeue", "-h", "-j", external_id, "-o", "%u"]).split()
            if not users:
                return
            user = users[0]
            as_user = None if user == _worker_user() else user
            self.cli.run(["scancel", external_id], as_user=as_user)
        except JobRejected as exc:
            if "invalid job id" not in str(exc).lower():
                raise  # a job Slurm no longer knows cannot be cancelled: nothing to do

    def logs(self, job, offset: int = 0, rank: int = 0) -> LogChunk:
        """The job's output; of a gang, rank `rank`'s (its node's task), as srun wrote it."""
        finished = bool(getattr(job, "is_terminal", False))
        if "_" in (job.external_id or ""):  # a task of the Slurm array
            path = self.array_dir(job.array) / f"task-{int(job.array_index)}.log"
            return read_log_file(path, offset, finished=finished)
        name = f"rank-{int(rank)}.log" if getattr(job, "nodes", 1) > 1 else "output.log"
        return read_log_file(self.job_dir(job) / name, offset, finished=finished)

    def health(self) -> Health:
        try:
            ping = self.cli.run(["scontrol", "ping"], check=False)
            if "UP" not in ping:
                return Health(ok=False, message=f"slurmctld is not answering: {ping.strip()}")
            nodes = self.cli.run(["sinfo", "-h", "-N", "-O", NODE_FIELDS])
        except BackendError as exc:
            return Health(ok=False, message=str(exc))
        pools = gpu_capacity(nodes, self.topology())
        down = sorted({line.split("|")[0] for line in nodes.splitlines() if node_down(line)})
        message = "controller up" + (f"; nodes down or drained: {', '.join(down)}" if down else "")
        return Health(ok=True, message=message, pools=tuple(pools))

    def topology(self) -> tuple[str, dict[str, str]] | None:
        """The site's topology (topology.conf), as node_switches reads it; None if Slurm did not
        say (the cluster is no less healthy for it, and its pools keep the topology they had)."""
        try:
            return node_switches(self.cli.run(["scontrol", "show", "topology"]))
        except BackendError:
            return None

    def health_key(self, pool) -> str:
        partition = pool.partition or self.connection.default_partition or ""
        return f"{partition}/{pool.gpu_type.slug}"

    def apply_tenant_limits(self, limits: dict[str, dict[str, GpuLimit]]) -> list[str]:
        return self.accounts.apply_limits(limits)

    # --- node health ----------------------------------------------------------------------------

    def drain(self, target: DrainTarget, reason: str) -> None:
        """`scontrol update NodeName=<node> State=DRAIN Reason="factory: …"` (as LBNL NHC does with
        its "NHC:" prefix): running jobs finish, nothing new starts there."""
        node = self._node_name(target.node)
        info = node_info(self.cli.run(["scontrol", "show", "node", node, "--oneliner"]))
        if "DRAIN" in info.get("State", "").upper() and not info.get("Reason", "").startswith(
            DRAIN_REASON_PREFIX
        ):
            return  # drained by an operator already: their reason stays
        self._update_node(node, "drain", slurm_reason(reason))

    def resume(self, target: DrainTarget) -> bool:
        """Resume the node only if the portal drained it (its reason starts with "factory:")."""
        node = self._node_name(target.node)
        info = node_info(self.cli.run(["scontrol", "show", "node", node, "--oneliner"]))
        state, reason = info.get("State", "").upper(), info.get("Reason", "")
        if "DRAIN" not in state:
            return True
        if not reason.startswith(DRAIN_REASON_PREFIX):
            return False
        return self._update_node(node, "resume")

    def _update_node(self, node: str, action: str, reason: str = "") -> bool:
        """Drain or resume through the site's node-state helper, run as a Slurm administrator (the
        worker is none; the sudo rule lets it run that one program so); without a helper, with
        scontrol as the worker itself. False: an operator drained the node meanwhile (the helper
        checks again, and leaves such a node alone)."""
        helper = self.connection.node_state_helper
        if not helper:
            state = ["State=DRAIN", f"Reason={reason}"] if action == "drain" else ["State=RESUME"]
            self.cli.run(["scontrol", "update", f"NodeName={node}", *state])
            return True
        argv = [helper, action, node, *([reason] if action == "drain" else [])]
        result = self.cli.run_as_admin(argv, self.connection.node_state_user)
        if result.returncode == NODE_NOT_OURS:
            log.info("%s on %s: %s", action, node, result.stderr.strip())
            return False
        if result.returncode != 0:
            raise classify_error("scontrol", result.stderr or result.stdout)
        return True

    def gpu_jobs(self) -> dict[tuple[str, int], str]:
        """From `scontrol show job -d`: each running job's GPU indexes on each node."""
        return job_gpu_indexes(self.cli.run(["scontrol", "show", "job", "-d", "--oneliner"], check=False))

    @staticmethod
    def _node_name(name: str) -> str:
        if not SAFE_TOKEN.fullmatch(name):
            raise BackendError(f"{name!r} is not a Slurm node name")
        return name

    # --- building the submission ----------------------------------------------------------------

    def sbatch_args(
        self, job, job_dir: Path, *, output: str = "output.log", key: str | None = None
    ) -> list[str]:
        if not JOB_NAME.fullmatch(job.name):
            raise JobRejected(f"{job.name!r} is not a valid job name")
        gpu_type = job.gpu_type.slug
        if not SAFE_TOKEN.fullmatch(gpu_type):
            raise JobRejected(f"{gpu_type!r} is not a valid GPU type name")
        output = str(job_dir / output)
        args = [
            "--parsable",
            f"--job-name={job.name}",
            f"--time={job.time_limit_minutes}",
            *self.placement_args(job),
            f"--cpus-per-task={int(job.cpus)}",
            f"--mem={int(job.memory_gb)}G",
            f"--output={output}",
            f"--error={output}",
            "--open-mode=append",
            f"--chdir={job_dir}",
            f"--comment={COMMENT_PREFIX}{key or dispatch_key(job)}",
            # The job must not inherit the worker's environment (database URLs, secrets).
            "--export=NONE",
        ]
        partition = self.partition_for(job)
        if partition:
            args.append(f"--partition={partition}")
        if self.connection.use_accounts:
            args.append(f"--account={self.accounts.name(job.tenant.slug)}")
        return args

    def placement_args(self, job) -> list[str]:
        """One node: its GPUs as gres, one task. A gang: one allocation of `nodes` nodes with
        `gpus_per_node` GPUs each (memory and CPUs are per node too), one task per node; under
        one leaf switch if admission placed it under one (--switches=1, waiting for one at most
        `gang_switch_wait_minutes`, else the cluster's max_switch_wait)."""
        gpu_type = job.gpu_type.slug
        nodes = int(getattr(job, "nodes", 1) or 1)
        if nodes == 1:
            return [f"--gres=gpu:{gpu_type}:{int(job.gpu_count)}", "--ntasks=1"]
        args = [
            f"--nodes={nodes}",
            "--ntasks-per-node=1",
            f"--gpus-per-node={gpu_type}:{int(job.gpus_per_node)}",
        ]
        if getattr(job, "topology_domain", "") and self.under_switches(job):
            wait = self.connection.gang_switch_wait_minutes
            args.append("--switches=1" if wait is None else f"--switches=1@{int(wait)}")
        return args

    def under_switches(self, job) -> bool:
        """Whether the job's pool's domains are switches (topology/tree), which --switches counts."""
        pool = self.pool_for(job)
        return pool is not None and pool.topology_level == "switch"

    @staticmethod
    def batch_script(job, secrets_dir: Path | None = None) -> str:
        """The script sbatch reads on stdin. Its first lines are commands, so sbatch stops looking
        for #SBATCH directives before the user's command, which it never parses as options. With
        `secrets_dir`, it exports the assignments of that directory's secrets.env, which only the
        job's owner may read: Slurm keeps the script, and the script holds no secret."""
        lines = ["#!/bin/bash", f"export PATH={JOB_PATH}"]
        lines += [f"export {name}={shlex.quote(value)}" for name, value in job_env(job).items()]
        lines += SlurmAdapter.secrets_lines(secrets_dir)
        lines += ["", gang_launch(job.command) if getattr(job, "nodes", 1) > 1 else job.command, ""]
        return "\n".join(lines)

    @staticmethod
    def secrets_lines(secrets_dir: Path | None) -> list[str]:
        if secrets_dir is None:
            return []
        path = shlex.quote(str(secrets_dir / "secrets.env"))
        return [
            f"set -a; . {path} || {{ echo 'factory: the job cannot read its secrets' >&2; exit 1; }}",
            "set +a",
        ]

    # --- reading state --------------------------------------------------------------------------

    # The two reads find() and statuses() make, one place to see (or stand in for) both.
    def squeue(self) -> list[dict]:
        return self.cli.squeue()

    def sacct(self, *args: str, check: bool = True) -> str:
        return self.cli.sacct(*args, check=check)

    def report_from_squeue(self, entry: dict, external_id: str | None = None) -> StatusReport:
        state_name = job_state(entry)
        state = STATES.get(state_name, BackendState.QUEUED)
        reason = ""
        if state == BackendState.QUEUED:
            raw = pending_reason(entry.get("state_reason") or "None")
            reason = PENDING_REASONS.get(raw, f"Slurm says: {raw}")
        elif state_name in END_REASONS:
            reason = END_REASONS[state_name]
        return StatusReport(
            external_id=external_id or str(entry["job_id"]),
            state=state,
            reason=reason,
            started_at=epoch(entry.get("start_time")) if state != BackendState.QUEUED else None,
            ended_at=epoch(entry.get("end_time")) if state.is_terminal else None,
            exit_code=wait_status(entry.get("exit_code")) if state.is_terminal else None,
            platform_fault=state_name in PLATFORM_FAULTS,
            nodes=expand_hostlist(entry.get("nodes") or "") if state != BackendState.QUEUED else (),
        )

    @staticmethod
    def allocated_nodes(sacct_nodes: str, squeue_entry: dict | None) -> tuple[str, ...]:
        """The job's nodes: accounting's list just after the job ended may name only its batch
        host, while squeue, which still lists the job for a while, names its whole allocation."""
        nodes = expand_hostlist(sacct_nodes)
        if squeue_entry is not None:
            listed = expand_hostlist(squeue_entry.get("nodes") or "")
            if len(listed) > len(nodes):
                return listed
        return nodes

    def sacct_reports(self, external_ids: list[str], live: dict[str, dict]) -> dict[str, StatusReport]:
        reports: dict[str, StatusReport] = {}
        if self.cli.accounting_enabled():
            out = self.sacct(
                "-j", ",".join(sorted(external_ids)), "-o", "JobID,State,ExitCode,Start,End,NodeList"
            )
            for line in out.splitlines():
                parts = line.split("|")
                if len(parts) != 6:
                    continue
                job_id, state_text, exit_text, start, end, node_list = parts
                state_name = state_text.split()[0] if state_text else ""  # "CANCELLED by 0"
                state = STATES.get(state_name, BackendState.QUEUED)
                if not state.is_terminal and job_id in live:
                    continue  # sacct lags behind squeue: trust squeue below
                reports[job_id] = StatusReport(
                    external_id=job_id,
                    state=state,
                    reason=END_REASONS.get(state_name, ""),
                    started_at=local_time(start, self.connection.timezone),
                    ended_at=local_time(end, self.connection.timezone) if state.is_terminal else None,
                    exit_code=sacct_exit_code(exit_text) if state.is_terminal else None,
                    platform_fault=state_name in PLATFORM_FAULTS,
                    nodes=self.allocated_nodes(node_list, live.get(job_id)),
                )
        for external_id in external_ids:
            if external_id in reports:
                continue
            if external_id in live:
                reports[external_id] = self.report_from_squeue(live[external_id], external_id)
            else:
                reports[external_id] = StatusReport(
                    external_id, BackendState.LOST, "Slurm no longer knows this job"
                )
        return reports


# A gang's ranks: one task per node, started by srun inside the allocation. Each rank gets the
# variables torchrun and most launchers read, derived from Slurm's own: MASTER_ADDR (the first
# node's address, as slurmctld knows it), MASTER_PORT (from the job id, so that two gangs sharing
# a node differ), WORLD_SIZE (nodes), NODE_RANK (the task's node index) and FACTORY_NODE_LIST.
# A rank that fails ends the others (--kill-on-bad-exit); the job's exit code is that of the rank
# that failed first, not those of the ranks stopped because of it (143 for SIGTERM, or whatever a
# launcher that catches it exits with). Each rank records its exit code and when it ended; the
# nodes' clocks agree, as munge needs them to. srun writes each rank's output to rank-<N>.log in
# the job's directory (the umask keeps it from other users).
FIRST_FAILURE = """\
first_failure() {
  for file in "$1"/rank-*.exit; do
    [ -f "$file" ] && read -r code at <"$file" && [ "$code" -ne 0 ] && echo "$at $code"
  done | sort -n | head -n 1 | cut -d' ' -f2
}
"""
GANG_LAUNCH = (
    """\
FACTORY_JOB_DIR=$PWD
FACTORY_NODE_LIST=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | paste -sd, -)
MASTER_ADDR=$(scontrol -o show node "${FACTORY_NODE_LIST%%,*}" | grep -o 'NodeAddr=[^ ]*' | cut -d= -f2)
export FACTORY_NODE_LIST MASTER_ADDR=${MASTER_ADDR:-${FACTORY_NODE_LIST%%,*}}
export MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000)) WORLD_SIZE=$SLURM_JOB_NUM_NODES
umask 0027
srun --export=ALL --nodes="$SLURM_JOB_NUM_NODES" --ntasks-per-node=1 --kill-on-bad-exit=1 \\
  --output="$FACTORY_JOB_DIR/rank-%t.log" /bin/bash -c \\
  'export NODE_RANK=$SLURM_NODEID; /bin/bash -c "$1"; code=$?
   echo "$code $(date +%s.%N)" >"$2/rank-$NODE_RANK.exit"; exit $code' \\
  rank {command} "$FACTORY_JOB_DIR"
launched=$?
"""
    + FIRST_FAILURE
    + """\
failed=$(first_failure "$FACTORY_JOB_DIR")
exit "${failed:-$launched}"
"""
)


def pending_reason(raw: str) -> str:
    """The reason squeue gives, for a task the portal handed over: the record of an array's tasks
    not started yet joins its tasks' reasons ("JobHeldUser,JobArrayTaskLimit"), and the held
    ones' is not this task's."""
    reasons = [reason for reason in raw.split(",") if reason]
    return next((reason for reason in reasons if reason != HELD_FOR_THE_PORTAL), raw)


def gang_launch(command: str) -> str:
    """The batch script's body for a job on several nodes: the user's command is one quoted
    argument of srun's, never part of a shell string."""
    return GANG_LAUNCH.replace("{command}", shlex.quote(command))


def _worker_user() -> str:
    """The POSIX name of the account the worker runs as ("" if it has none, as in some containers)."""
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return ""
