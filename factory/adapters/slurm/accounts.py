"""Tenants as Slurm accounts (account prefix + tenant slug), and the GPU limits on them, through
sacctmgr: an account, and its association with a job owner's POSIX user, is made when Slurm refuses
the owner's job for want of one, and each tenant's quotas become its account's GrpTRES (GPUs in use
at once) and MaxTRESPerJob, so that Slurm itself holds jobs that reach it without the portal.

sacctmgr runs as the worker's own account, the portal's operator identity (a Slurm Operator). No
job can act as it: jobs run as their owners, whom the sudo rule lets the worker act as, never the
reverse, and who are no Slurm operators or admins.
"""

from __future__ import annotations

import logging

from ..base import NO_LIMIT, BackendError, GpuLimit, JobRejected
from .cli import SAFE_TOKEN, SlurmCLI, classify_error, gpu_tres
from .connection import SlurmConnection

log = logging.getLogger(__name__)


class SlurmAccounts:
    """The tenants' accounts on one cluster."""

    def __init__(self, cli: SlurmCLI, connection: SlurmConnection, cluster) -> None:
        self.cli = cli
        self.connection = connection
        self.cluster = cluster

    def name(self, tenant_slug: str) -> str:
        account = f"{self.connection.account_prefix}{tenant_slug}"
        if not SAFE_TOKEN.fullmatch(account):
            raise JobRejected(f"{account!r} cannot be a Slurm account name")
        return account.lower()

    def ensure(self, tenant_slug: str, user: str | None = None) -> bool:
        """Create the tenant's account if missing, and associate the POSIX user that jobs of the
        tenant run as (the job's owner) with it, so that their `--account` is accepted."""
        if not (self.connection.manage_accounts and self.cli.accounting_enabled()):
            return False
        account = self.name(tenant_slug)
        if not self.cli.run(
            ["sacctmgr", "-n", "-P", "show", "account", account, "format=Account"], check=False
        ).strip():
            self._add(
                ["account", account, f"Description=portal tenant {tenant_slug}", "Organization=aifactory"]
            )
            log.info("created Slurm account %s on %s", account, self.cluster)
        if user is None:
            return True
        associations = self.cli.run(
            ["sacctmgr", "-n", "-P", "show", "assoc", f"account={account}", f"user={user}", "format=User"],
            check=False,
        )
        if user not in associations.split():
            self._add(["user", user, f"Account={account}"])
            log.info("associated Slurm user %s with account %s on %s", user, account, self.cluster)
        return True

    def apply_limits(self, limits: dict[str, dict[str, GpuLimit]]) -> list[str]:
        """Each tenant's GPU ceilings as its account's GrpTRES (GPUs at once, for the whole
        account) and MaxTRESPerJob, per typed GPU TRES (gres/gpu:<type>). One read of all
        accounts' limits, then one `sacctmgr modify` per account that differs. An account that
        does not exist yet is made when its tenant may use GPUs here. GPU types that Slurm does
        not account for (missing from AccountingStorageTRES) cannot be limited and are skipped.
        Returns the tenants whose limits changed."""
        if not (
            self.connection.use_accounts and self.connection.manage_accounts and self.cli.accounting_enabled()
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
        current = self.limits()
        changed = []
        for tenant_slug, by_type in sorted(limits.items()):
            wanted = {t: limit for t, limit in by_type.items() if t in tracked}
            account = self.name(tenant_slug)
            have = current.get(account)
            if have is None:
                if not any(limit.total != 0 for limit in wanted.values()):
                    continue  # no account, and nothing it could use: Slurm refuses its jobs anyway
                self.ensure(tenant_slug)
                have = {}
            if all(have.get(t, NO_LIMIT) == limit for t, limit in wanted.items()):
                continue
            self._set_limits(account, wanted)
            changed.append(tenant_slug)
        return changed

    def tracked_gpu_types(self) -> set[str]:
        """GPU types Slurm accounts for as typed TRES (gres/gpu:<type>), so limits on them hold."""
        out = self.cli.run(["sacctmgr", "-n", "-P", "show", "tres", "format=Type,Name"])
        return {
            name.split(":", 1)[1]
            for kind, _, name in (line.partition("|") for line in out.splitlines())
            if kind == "gres" and name.startswith("gpu:")
        }

    def limits(self) -> dict[str, dict[str, GpuLimit]]:
        """The typed-GPU GrpTRES and MaxTRES (per job) of every account's own association."""
        out = self.cli.run(
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
            totals, per_jobs = gpu_tres(group), gpu_tres(per_job)
            limits[account] = {t: GpuLimit(totals.get(t), per_jobs.get(t)) for t in {*totals, *per_jobs}}
        return limits

    def _set_limits(self, account: str, limits: dict[str, GpuLimit]) -> None:
        def tres(values: dict[str, int | None]) -> str:
            return ",".join(f"gres/gpu:{t}={-1 if n is None else int(n)}" for t, n in sorted(values.items()))

        result = self.cli.execute(
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
        name = self.cli.controller_config().get("ClusterName")
        return [f"cluster={name}"] if name and SAFE_TOKEN.fullmatch(name) else []

    def _add(self, what: list[str]) -> None:
        result = self.cli.execute(["sacctmgr", "-i", "add", *what])
        if result.returncode != 0 and "Nothing new added" not in result.stdout + result.stderr:
            raise BackendError(f"sacctmgr add {' '.join(what[:2])} failed: {result.stderr.strip()}")
