"""The `slurm` backend: a real Slurm cluster driven through its command-line tools.

The portal's workers act as a Slurm submit host (munge-authenticated CLI). Every call is an
argument list, never a shell string; user input reaches Slurm only as validated option values and
as the body of a batch script whose environment values are shell-quoted.

- submit: `sbatch --parsable`, script on stdin, the job uid in `--comment` so that a retried
  dispatch finds the job (a marker file first, then squeue, then sacct) instead of submitting again.
- statuses: one `squeue --json` per sync for all jobs (22.05 ignores its filters: filter here), and
  one `sacct -P` for those that ended or left squeue (exit codes from its text field; the JSON ones
  are wrong in 22.05).
- cancel: `scancel`; logs: the job's output file, read from an offset while it grows.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pydantic
from django.conf import settings

from .base import (
    NO_LIMIT,
    Adapter,
    BackendError,
    BackendState,
    BackendUnavailable,
    GpuLimit,
    Health,
    JobRejected,
    LogChunk,
    PoolHealth,
    StatusReport,
    dispatch_key,
    job_env,
    read_log_file,
)
from .connection import Connection

log = logging.getLogger(__name__)

SAFE_TOKEN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
JOB_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
COMMENT_PREFIX = "aif:"
CONFIG_CACHE_SECONDS = 300
_CONFIG: dict[str, tuple[dict[str, str], float]] = {}
JOB_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What the CLI tools themselves may see of the worker's environment (never its secrets).
CLI_ENV_KEYS = ("PATH", "SLURM_CONF", "LANG", "LC_ALL", "TZ", "HOME", "USER", "LOGNAME")

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
}

UNREACHABLE = (
    "unable to contact slurm controller",
    "socket timed out",
    "connection refused",
    "slurm_load_jobs error",
    "slurmctld",
    "zero bytes were transmitted",
    "communication connection failure",
    "unable to establish connection",
    "munge",
)
REFUSED = (
    "invalid account",
    "invalid partition",
    "requested node configuration is not available",
    "invalid generic resource",
    "invalid gres",
    "job violates accounting/qos policy",
    "invalid qos",
    "memory specification can not be satisfied",
    "requested time limit is invalid",
    "more processors requested than permitted",
    "invalid feature specification",
)


class SlurmConnection(Connection):
    job_root: str | None = None  # per-job directories, on storage the compute nodes share
    default_partition: str | None = None  # used when a pool names no partition
    account_prefix: str = ""  # Slurm account = prefix + tenant slug
    use_accounts: bool = True  # pass --account (needed where slurmdbd enforces associations)
    manage_accounts: bool = True  # create a tenant's account with sacctmgr when Slurm rejects it
    timezone: str = "UTC"  # the controller's time zone, for sacct's local timestamps
    bin_dir: str | None = None  # where sbatch & co. live, if not on PATH
    command_timeout: float = 30.0

    @pydantic.field_validator("default_partition", "account_prefix")
    @classmethod
    def _slurm_name(cls, value: str | None, info: pydantic.ValidationInfo) -> str | None:
        exempt = info.field_name == "account_prefix" and value.isalnum()
        if value and not exempt and not SAFE_TOKEN.fullmatch(value):
            raise ValueError(
                f"Connection setting {info.field_name!r} may use only letters, digits, '.', '_', '-'."
            )
        return value

    @pydantic.field_validator("timezone")
    @classmethod
    def _known_zone(cls, timezone: str) -> str:
        try:
            ZoneInfo(timezone)
        except Exception:
            raise ValueError(f"Unknown time zone {timezone!r}.") from None
        return timezone


class SlurmAdapter(Adapter):
    kind = "slurm"
    connection_class = SlurmConnection
    keeps_tenant_limits = True

    # --- paths and names ------------------------------------------------------------------------

    @property
    def job_root(self) -> Path:
        base = self.connection.job_root or settings.FACTORY_SLURM_JOB_ROOT
        return Path(base) / self.cluster.slug

    def job_dir(self, job) -> Path:
        return self.job_root / dispatch_key(job)

    def account_for(self, job) -> str:
        return self.account_name(job.tenant.slug)

    def account_name(self, tenant_slug: str) -> str:
        account = f"{self.connection.account_prefix}{tenant_slug}"
        if not SAFE_TOKEN.fullmatch(account):
            raise JobRejected(f"{account!r} cannot be a Slurm account name")
        return account.lower()

    def partition_for(self, job) -> str | None:
        pool = self.pool_for(job)
        partition = (pool.partition if pool else "") or self.connection.default_partition
        if partition and not SAFE_TOKEN.fullmatch(partition):
            raise JobRejected(f"{partition!r} is not a valid partition name")
        return partition or None

    # --- the protocol ---------------------------------------------------------------------------

    def submit(self, job) -> str:
        existing = self.find(job)
        if existing:
            return existing
        job_dir = self.job_dir(job)
        job_dir.mkdir(parents=True, exist_ok=True)
        args = self.sbatch_args(job, job_dir)
        script = self.batch_script(job)
        try:
            out = self.run(["sbatch", *args], stdin=script)
        except JobRejected as exc:
            if "invalid account" not in str(exc).lower() or not self.ensure_account(job):
                raise
            out = self.run(["sbatch", *args], stdin=script)
        external_id = out.strip().split(";", 1)[0]
        if not external_id.isdigit():
            raise BackendError(f"sbatch answered {out.strip()!r}, not a job id")
        (job_dir / "slurm_job_id").write_text(external_id)
        return external_id

    def find(self, job) -> str | None:
        """The Slurm job already made for this portal job, if a previous dispatch got that far."""
        job_dir = self.job_dir(job)
        if not job_dir.exists():
            return None  # the directory is made before sbatch runs: no earlier attempt got that far
        marker = job_dir / "slurm_job_id"
        if marker.exists() and marker.read_text().strip().isdigit():
            return marker.read_text().strip()
        comment = f"{COMMENT_PREFIX}{dispatch_key(job)}"
        for entry in self.squeue():
            if entry.get("comment") == comment:
                return str(entry["job_id"])
        if self.accounting_enabled():
            out = self.sacct("-S", "now-14days", "--name", job.name, "-o", "JobID,Comment", check=False)
            for line in out.splitlines():
                job_id, _, found = line.partition("|")
                if found == comment:
                    return job_id
        return None

    def statuses(self, jobs) -> dict[str, StatusReport]:
        jobs = [j for j in jobs if j.external_id]
        if not jobs:
            return {}
        wanted = {j.external_id for j in jobs}
        live = {str(e["job_id"]): e for e in self.squeue() if str(e["job_id"]) in wanted}
        reports: dict[str, StatusReport] = {}
        settled: list[str] = []
        for external_id in wanted:
            entry = live.get(external_id)
            if entry is None or STATES.get(_job_state(entry), BackendState.QUEUED).is_terminal:
                settled.append(external_id)
            else:
                reports[external_id] = self.report_from_squeue(entry)
        if settled:
            reports.update(self.sacct_reports(settled, live))
        return reports

    def cancel(self, job) -> None:
        if not job.external_id:
            return
        try:
            self.run(["scancel", job.external_id])
        except JobRejected as exc:
            if "invalid job id" not in str(exc).lower():
                raise  # an already finished job cannot be cancelled: nothing to do

    def logs(self, job, offset: int = 0) -> LogChunk:
        finished = bool(getattr(job, "is_terminal", False))
        return read_log_file(self.job_dir(job) / "output.log", offset, finished=finished)

    def health(self) -> Health:
        try:
            ping = self.run(["scontrol", "ping"], check=False)
            if "UP" not in ping:
                return Health(ok=False, message=f"slurmctld is not answering: {ping.strip()}")
            nodes = self.run(
                ["sinfo", "-h", "-N", "-O", "NodeList:|,Partition:|,Gres:|,GresUsed:|,StateLong"]
            )
        except BackendUnavailable as exc:
            return Health(ok=False, message=str(exc))
        pools = _gpu_capacity(nodes)
        down = sorted({line.split("|")[0] for line in nodes.splitlines() if _node_down(line)})
        message = "controller up" + (f"; nodes down or drained: {', '.join(down)}" if down else "")
        return Health(ok=True, message=message, pools=tuple(pools))

    # --- building the submission ----------------------------------------------------------------

    def sbatch_args(self, job, job_dir: Path) -> list[str]:
        if not JOB_NAME.fullmatch(job.name):
            raise JobRejected(f"{job.name!r} is not a valid job name")
        gpu_type = job.gpu_type.slug
        if not SAFE_TOKEN.fullmatch(gpu_type):
            raise JobRejected(f"{gpu_type!r} is not a valid GPU type name")
        output = str(job_dir / "output.log")
        args = [
            "--parsable",
            f"--job-name={job.name}",
            f"--time={job.time_limit_minutes}",
            f"--gres=gpu:{gpu_type}:{int(job.gpu_count)}",
            "--ntasks=1",
            f"--cpus-per-task={int(job.cpus)}",
            f"--mem={int(job.memory_gb)}G",
            f"--output={output}",
            f"--error={output}",
            "--open-mode=append",
            f"--chdir={job_dir}",
            f"--comment={COMMENT_PREFIX}{dispatch_key(job)}",
            # The job must not inherit the worker's environment (database URLs, secrets).
            "--export=NONE",
        ]
        partition = self.partition_for(job)
        if partition:
            args.append(f"--partition={partition}")
        if self.connection.use_accounts:
            args.append(f"--account={self.account_for(job)}")
        return args

    @staticmethod
    def batch_script(job) -> str:
        """The script sbatch reads on stdin. Its first lines are commands, so sbatch stops looking
        for #SBATCH directives before the user's command, which it never parses as options."""
        lines = ["#!/bin/bash", f"export PATH={JOB_PATH}"]
        lines += [f"export {name}={shlex.quote(value)}" for name, value in job_env(job).items()]
        lines += ["", job.command, ""]
        return "\n".join(lines)

    # --- reading state --------------------------------------------------------------------------

    def squeue(self) -> list[dict]:
        """Every job slurmctld still holds (finished ones too, until MinJobAge)."""
        out = self.run(["squeue", "--json"])
        try:
            data = json.loads(out)
        except json.JSONDecodeError as exc:
            raise BackendUnavailable(f"squeue --json gave unreadable output: {exc}") from None
        # With slurmctld down, 22.05 exits 0 with an empty job list and the failure in "errors":
        # taken at face value, every job would look lost.
        errors = data.get("errors") or []
        if errors:
            detail = "; ".join(
                f"{e.get('source', '')}: {e.get('description', e.get('error', ''))}" for e in errors
            )
            raise BackendUnavailable(f"squeue failed: {detail}")
        return data.get("jobs", [])

    def report_from_squeue(self, entry: dict) -> StatusReport:
        state_name = _job_state(entry)
        state = STATES.get(state_name, BackendState.QUEUED)
        reason = ""
        if state == BackendState.QUEUED:
            raw = entry.get("state_reason") or "None"
            reason = PENDING_REASONS.get(raw, f"Slurm says: {raw}")
        elif state_name in END_REASONS:
            reason = END_REASONS[state_name]
        return StatusReport(
            external_id=str(entry["job_id"]),
            state=state,
            reason=reason,
            started_at=_epoch(entry.get("start_time")) if state != BackendState.QUEUED else None,
            ended_at=_epoch(entry.get("end_time")) if state.is_terminal else None,
            exit_code=_wait_status(entry.get("exit_code")) if state.is_terminal else None,
            platform_fault=state_name in PLATFORM_FAULTS,
        )

    def sacct_reports(self, external_ids: list[str], live: dict[str, dict]) -> dict[str, StatusReport]:
        reports: dict[str, StatusReport] = {}
        if self.accounting_enabled():
            out = self.sacct("-j", ",".join(sorted(external_ids)), "-o", "JobID,State,ExitCode,Start,End")
            for line in out.splitlines():
                parts = line.split("|")
                if len(parts) != 5:
                    continue
                job_id, state_text, exit_text, start, end = parts
                state_name = state_text.split()[0] if state_text else ""  # "CANCELLED by 0"
                state = STATES.get(state_name, BackendState.QUEUED)
                if not state.is_terminal and job_id in live:
                    continue  # sacct lags behind squeue: trust squeue below
                reports[job_id] = StatusReport(
                    external_id=job_id,
                    state=state,
                    reason=END_REASONS.get(state_name, ""),
                    started_at=self._local_time(start),
                    ended_at=self._local_time(end) if state.is_terminal else None,
                    exit_code=_sacct_exit_code(exit_text) if state.is_terminal else None,
                    platform_fault=state_name in PLATFORM_FAULTS,
                )
        for external_id in external_ids:
            if external_id in reports:
                continue
            if external_id in live:
                reports[external_id] = self.report_from_squeue(live[external_id])
            else:
                reports[external_id] = StatusReport(
                    external_id, BackendState.LOST, "Slurm no longer knows this job"
                )
        return reports

    def sacct(self, *args: str, check: bool = True) -> str:
        """One allocation line per job (-X), parseable (-P), all users' jobs (-a)."""
        return self.run(["sacct", "-X", "-n", "-P", "-a", *args], check=check)

    def accounting_enabled(self) -> bool:
        """Whether slurmdbd keeps accounting (sacct works)."""
        return self.controller_config()["AccountingStorageType"] != "accounting_storage/none"

    def controller_config(self) -> dict[str, str]:
        """What the portal needs of the controller's config, read with `scontrol show config` and
        remembered per cluster for a while, since an adapter lives for one task or sync."""
        cached = _CONFIG.get(self.cluster.slug)
        if cached and cached[1] > time.monotonic():
            return cached[0]
        out = self.run(["scontrol", "show", "config"])  # unreachable controller: unknown, not "no"
        config = {
            key: match[1]
            for key in ("AccountingStorageType", "ClusterName")
            if (match := re.search(rf"^{key}\s*=\s*(\S+)", out, re.MULTILINE))
        }
        if "AccountingStorageType" not in config:
            raise BackendUnavailable("scontrol show config did not name the accounting storage")
        _CONFIG[self.cluster.slug] = (config, time.monotonic() + CONFIG_CACHE_SECONDS)
        return config

    def ensure_account(self, job) -> bool:
        """Create the job's tenant's Slurm account (and the submitting user's association) if
        missing."""
        return self.ensure_tenant_account(job.tenant.slug)

    def ensure_tenant_account(self, tenant_slug: str) -> bool:
        if not (self.connection.manage_accounts and self.accounting_enabled()):
            return False
        account = self.account_name(tenant_slug)
        user = _submitting_user()
        if not self.run(
            ["sacctmgr", "-n", "-P", "show", "account", account, "format=Account"], check=False
        ).strip():
            self._sacctmgr_add(
                ["account", account, f"Description=portal tenant {tenant_slug}", "Organization=aifactory"]
            )
        associations = self.run(
            ["sacctmgr", "-n", "-P", "show", "assoc", f"account={account}", f"user={user}", "format=User"],
            check=False,
        )
        if user not in associations.split():
            self._sacctmgr_add(["user", user, f"Account={account}"])
        log.info("created Slurm account %s on %s", account, self.cluster)
        return True

    # --- tenant limits --------------------------------------------------------------------------

    def apply_tenant_limits(self, limits: dict[str, dict[str, GpuLimit]]) -> list[str]:
        """Each tenant's GPU ceilings as its account's GrpTRES (GPUs at once, for the whole
        account) and MaxTRESPerJob, per typed GPU TRES (gres/gpu:<type>). One read of all
        accounts' limits, then one `sacctmgr modify` per account that differs. An account that
        does not exist yet is made when its tenant may use GPUs here. GPU types that Slurm does
        not account for (missing from AccountingStorageTRES) cannot be limited and are skipped."""
        if not (
            self.connection.use_accounts and self.connection.manage_accounts and self.accounting_enabled()
        ):
            return []
        tracked = self.tracked_gpu_types()
        untracked = sorted({t for by_type in limits.values() for t in by_type} - tracked)
        if untracked:
            log.warning(
                "Slurm on %s does not account for GPU type(s) %s (AccountingStorageTRES): not limited",
                self.cluster,
                ", ".join(untracked),
            )
        current = self.account_limits()
        changed = []
        for tenant_slug, by_type in sorted(limits.items()):
            wanted = {t: limit for t, limit in by_type.items() if t in tracked}
            account = self.account_name(tenant_slug)
            have = current.get(account)
            if have is None:
                if not any(limit.total != 0 for limit in wanted.values()):
                    continue  # no account, and nothing it could use: Slurm refuses its jobs anyway
                self.ensure_tenant_account(tenant_slug)
                have = {}
            if all(have.get(t, NO_LIMIT) == limit for t, limit in wanted.items()):
                continue
            self._set_account_limits(account, wanted)
            changed.append(tenant_slug)
        return changed

    def tracked_gpu_types(self) -> set[str]:
        """GPU types Slurm accounts for as typed TRES (gres/gpu:<type>), so limits on them hold."""
        out = self.run(["sacctmgr", "-n", "-P", "show", "tres", "format=Type,Name"])
        return {
            name.split(":", 1)[1]
            for kind, _, name in (line.partition("|") for line in out.splitlines())
            if kind == "gres" and name.startswith("gpu:")
        }

    def account_limits(self) -> dict[str, dict[str, GpuLimit]]:
        """The typed-GPU GrpTRES and MaxTRES (per job) of every account's own association."""
        out = self.run(
            [
                "sacctmgr",
                "-n",
                "-P",
                "show",
                "assoc",
                *self._this_cluster(),
                "format=Account,User,GrpTRES,MaxTRES",
            ]
        )
        limits: dict[str, dict[str, GpuLimit]] = {}
        for line in out.splitlines():
            parts = line.split("|")
            if len(parts) != 4 or parts[1]:
                continue  # a user's association: accounts hold the limits
            account, _, group, per_job = parts
            totals, per_jobs = _gpu_tres(group), _gpu_tres(per_job)
            limits[account] = {t: GpuLimit(totals.get(t), per_jobs.get(t)) for t in {*totals, *per_jobs}}
        return limits

    def _set_account_limits(self, account: str, limits: dict[str, GpuLimit]) -> None:
        def tres(values: dict[str, int | None]) -> str:
            return ",".join(f"gres/gpu:{t}={-1 if n is None else int(n)}" for t, n in sorted(values.items()))

        result = self._exec(
            [
                "sacctmgr",
                "-i",
                "modify",
                "account",
                "where",
                f"name={account}",
                *self._this_cluster(),
                "set",
                f"GrpTRES={tres({t: limit.total for t, limit in limits.items()})}",
                f"MaxTRESPerJob={tres({t: limit.per_job for t, limit in limits.items()})}",
            ]
        )
        if result.returncode != 0 and "Nothing modified" not in result.stdout + result.stderr:
            raise classify_error("sacctmgr", result.stderr or result.stdout)
        log.info("Slurm account %s on %s: GPU limits %s", account, self.cluster, limits)

    def _this_cluster(self) -> list[str]:
        name = self.controller_config().get("ClusterName")
        return [f"cluster={name}"] if name and SAFE_TOKEN.fullmatch(name) else []

    def _sacctmgr_add(self, what: list[str]) -> None:
        result = self._exec(["sacctmgr", "-i", "add", *what])
        if result.returncode != 0 and "Nothing new added" not in result.stdout + result.stderr:
            raise BackendError(f"sacctmgr add {' '.join(what[:2])} failed: {result.stderr.strip()}")

    def _local_time(self, text: str) -> datetime | None:
        if not text or text in {"Unknown", "None"}:
            return None
        naive = datetime.fromisoformat(text)
        return naive.replace(tzinfo=ZoneInfo(self.connection.timezone)).astimezone(UTC)

    # --- running the tools ----------------------------------------------------------------------

    def run(self, argv: list[str], *, stdin: str | None = None, check: bool = True) -> str:
        result = self._exec(argv, stdin=stdin)
        if result.returncode != 0 and check:
            raise classify_error(argv[0], result.stderr or result.stdout)
        return result.stdout

    def _exec(self, argv: list[str], *, stdin: str | None = None) -> subprocess.CompletedProcess:
        binary = os.path.join(self.connection.bin_dir, argv[0]) if self.connection.bin_dir else argv[0]
        env = {k: os.environ[k] for k in CLI_ENV_KEYS if k in os.environ}
        try:
            return subprocess.run(
                [binary, *argv[1:]],
                input=stdin,
                capture_output=True,
                text=True,
                timeout=self.connection.command_timeout,
                env=env,
                check=False,
            )
        except FileNotFoundError:
            raise BackendUnavailable(f"{argv[0]} is not installed on this worker") from None
        except subprocess.TimeoutExpired:
            raise BackendUnavailable(
                f"{argv[0]} did not answer within {self.connection.command_timeout:g} s"
            ) from None


def classify_error(tool: str, message: str) -> BackendError:
    text = message.strip() or f"{tool} failed"
    lowered = text.lower()
    if any(marker in lowered for marker in REFUSED) or "invalid job id" in lowered:
        return JobRejected(text)
    if any(marker in lowered for marker in UNREACHABLE):
        return BackendUnavailable(text)
    log.warning("unrecognised %s error, treated as transient: %s", tool, text)
    return BackendUnavailable(text)


def _job_state(entry: dict) -> str:
    state = entry.get("job_state", "")
    if isinstance(state, list):  # newer Slurm gives a list of flags
        state = state[0] if state else ""
    return str(state).upper()


def _epoch(value) -> datetime | None:
    if isinstance(value, dict):  # newer Slurm: {"set": true, "number": ...}
        value = value.get("number") if value.get("set", True) else None
    if not value:
        return None
    return datetime.fromtimestamp(int(value), tz=UTC)


def _wait_status(value) -> int | None:
    """squeue --json gives the raw wait status: 768 for `exit 3`, 9 for SIGKILL."""
    if isinstance(value, dict):
        value = value.get("return_code", {}).get("number") if "return_code" in value else value.get("number")
    if value is None:
        return None
    value = int(value)
    if value & 0x7F:
        return 128 + (value & 0x7F)
    return value >> 8


def _gpu_tres(text: str) -> dict[str, int]:
    """'cpu=4,gres/gpu:h100=3' → {'h100': 3} (typed GPU TRES only)."""
    counts = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        if name.startswith("gres/gpu:") and value.isdigit():
            counts[name.removeprefix("gres/gpu:")] = int(value)
    return counts


def _sacct_exit_code(text: str) -> int | None:
    """sacct's `code:signal`; a job killed by a signal reports 128 + signal, like a shell."""
    code, _, signal = text.partition(":")
    if not code.isdigit():
        return None
    if signal.isdigit() and int(signal) and not int(code):
        return 128 + int(signal)
    return int(code)


def _gpu_capacity(nodes_text: str) -> list[PoolHealth]:
    """Sum GPUs per (partition, type) from `sinfo -N -O NodeList,Partition,Gres,GresUsed,StateLong`."""
    totals: dict[str, list[int]] = {}
    for line in nodes_text.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) < 4:
            continue
        _node, partition, gres, used = parts[:4]
        for gpu_type, count in _gres_counts(gres).items():
            key = f"{partition.rstrip('*')}/{gpu_type}"
            entry = totals.setdefault(key, [0, 0])
            entry[0] += count
            entry[1] += _gres_counts(used).get(gpu_type, 0)
    return [
        PoolHealth(gpu_type=key, capacity=cap, in_use=used) for key, (cap, used) in sorted(totals.items())
    ]


def _gres_counts(text: str) -> dict[str, int]:
    """'gpu:h100:8(S:0)' or 'gpu:h100:2(IDX:0-1)' → {'h100': 8}."""
    counts: dict[str, int] = {}
    for item in text.split(","):
        match = re.match(r"gpu:([A-Za-z0-9._-]+):(\d+)", item.strip())
        if match:
            counts[match[1]] = counts.get(match[1], 0) + int(match[2])
    return counts


def _node_down(line: str) -> bool:
    state = line.rsplit("|", 1)[-1].strip().lower()
    return any(word in state for word in ("down", "drain", "fail", "not_responding"))


def _submitting_user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name
