"""A Slurm cluster's connection settings."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import pydantic

from ..base import POSIX_USERNAME
from ..connection import Connection
from .cli import SAFE_TOKEN

JOB_DIR_HELPER = "/usr/local/libexec/aifactory/slurm-job-dir"
NODE_STATE_HELPER = "/usr/local/libexec/aifactory/slurm-node-state"


class SlurmConnection(Connection):
    job_root: str | None = None  # per-job directories, on storage the compute nodes share
    default_partition: str | None = None  # used when a pool names no partition
    account_prefix: str = ""  # Slurm account = prefix + tenant slug
    use_accounts: bool = True  # pass --account (needed where slurmdbd enforces associations)
    manage_accounts: bool = True  # create a tenant's account with sacctmgr when Slurm rejects it
    timezone: str = "UTC"  # the controller's time zone, for sacct's local timestamps
    bin_dir: str | None = None  # where sbatch & co. live, if not on PATH
    command_timeout: float = 30.0
    # The group of job directories and logs: the portal's own (its web and worker processes are
    # members, researchers are not). Default: the worker's primary group.
    job_group: str | None = None
    # A gang admission placed under one leaf switch of the site's topology (topology.conf) asks
    # Slurm for one switch too (--switches=1), waiting for one up to this many minutes before it
    # takes nodes under several (None: the cluster's max_switch_wait, 300 s by default).
    gang_switch_wait_minutes: int | None = pydantic.Field(default=None, ge=0, le=1440)
    # scripts/slurm-job-dir as installed, root-owned; the sudo rule names the same path.
    job_dir_helper: str = JOB_DIR_HELPER
    # Draining and resuming a node takes a Slurm administrator, which the worker is not: it runs
    # scripts/slurm-node-state as installed, root-owned, through sudo as `node_state_user` (the
    # site's SlurmUser, or root), as the sudo rule allows. Empty: the worker runs scontrol itself,
    # and must then be a Slurm administrator.
    node_state_helper: str = NODE_STATE_HELPER
    node_state_user: str = "root"

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

    @pydantic.field_validator("job_group")
    @classmethod
    def _group_name(cls, value: str | None) -> str | None:
        if value is not None and not POSIX_USERNAME.fullmatch(value):
            raise ValueError("Connection setting 'job_group' must be a POSIX group name.")
        return value

    @pydantic.field_validator("job_dir_helper", "node_state_helper")
    @classmethod
    def _absolute_path(cls, value: str, info: pydantic.ValidationInfo) -> str:
        if info.field_name == "node_state_helper" and value == "":
            return value
        if not value.startswith("/") or any(c.isspace() or c == "\0" for c in value):
            raise ValueError(f"Connection setting {info.field_name!r} must be an absolute path.")
        return value

    @pydantic.field_validator("node_state_user")
    @classmethod
    def _user_name(cls, value: str) -> str:
        if not POSIX_USERNAME.fullmatch(value):
            raise ValueError("Connection setting 'node_state_user' must be a POSIX user name.")
        return value
