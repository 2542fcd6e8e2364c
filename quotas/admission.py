"""Admission: which pending job gets GPUs next, on which cluster, and why the rest wait.

One pass at a time holds a database-wide admission lock (a PostgreSQL advisory lock; SQLite
serialises writers anyway), loads the whole picture with a fixed number of queries, decides in
memory and writes only what it decided. Usage is always derived from the jobs that hold GPUs, so a
released GPU is counted once, by whichever pass comes next.

Rules (see Quota and Budget):
- a tenant without a quota row for a GPU type cannot use it; per-job and per-user caps apply;
- up to `nominal` GPUs are guaranteed (a department's own jobs: its nominal less its projects');
  above it a tenant borrows, within its `borrowing_limit`, from what the others lend (their idle
  nominal, up to their `lending_limit`, plus unassigned capacity); quotas nest along the tenant
  tree as Kueue's hierarchical cohorts (quotas.cohorts): idle GPUs go to borrowers within the
  same department first, then within the organisation, then across organisations;
- a hard budget holds jobs whose GPUs × time limit exceed what is left this month, of the
  tenant's budget and of every budget above it (a department's budget caps its projects together);
- pools are never filled past their capacity, less the GPUs out of service (failed or drained:
  a node missing one is not a whole node); among the clusters the tenant's residency allows and
  that would run the job (its owner has a POSIX account where jobs run as their owners, its image
  is on the cluster's allow-list), the least loaded pool with room wins;
- a gang (a job on several nodes) is admitted only when all its nodes fit at once; where the
  site describes its topology, it goes where all its nodes fit under one switch or block if any
  pool has room for that (and its backend is told to keep them there), else over several;
- order across tenants: fair share (use ÷ nominal, lowest first), then submit time; within a
  tenant, priority (capped by the ceiling the platform sets for it) first; a job that does not fit
  is skipped, so smaller jobs behind it can go;
- dependencies: a job that runs after others waits, outside the order, until they ended as it
  asked (jobs/dependencies.py);
- placement asked for: a job asked to run on one cluster or in one region goes only there;
- arrays: each task is a job like any other (quotas, budgets and fair share count each), but at
  most the array's `max_running` hold GPUs at once, and all go to the cluster its first admitted
  task went to while that cluster accepts jobs (where Slurm holds them as one job array). Tasks of
  one array ask for the same: once one waits in a round, the rest wait for the same reason;
- reclaim: a job within its tenant's nominal quota that finds no room preempts the newest jobs
  running on borrowed GPUs (never to serve a borrower), nearest in the tenant tree first, and only
  jobs of subtrees that borrow from above where they meet the tenant's.
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from importlib import import_module

from django.conf import settings
from django.db import connection, models, transaction
from django.utils import timezone

from factory import bulk
from factory.adapters import ImageRule
from factory.choices import GANG_KINDS, POSIX_USER_KINDS
from factory.hierarchy import TenantTree
from factory.models import Identity, Pool, Tenant
from factory.months import month_of
from factory.shapes import NodeShape, PoolNodes
from fleet.capacity import out_of_service
from jobs import dependencies, lifecycle
from jobs.choices import HOLDING_STATES, JobState
from jobs.models import Job, JobArray

from . import metrics
from .cohorts import CohortTree
from .models import Budget, Quota, Reservation
from .settlement import gpu_hours_between, round_gpu_hours, settle_released

log = logging.getLogger(__name__)

ADMISSION_LOCK_ID = 0x41494641  # any constant shared by every worker: "AIFA"
# A job that may be preempted: (job id, GPUs, tenant id, owner id, nodes, GPUs per node, the
# topology domain admission placed it in).
Victim = tuple[int, int, int, int, int, int, str]
PREEMPTED_REASON = "preempted to return borrowed GPUs"


@dataclasses.dataclass
class PoolState:
    pool_id: int
    cluster_id: int
    cluster: str
    region: str
    accepts_jobs: bool
    capacity: int
    used: int = 0
    kind: str = ""
    images: ImageRule | None = None  # which images the cluster runs; None: runs none at all
    shape: NodeShape | None = None
    gangs: bool = False  # its backend starts a job on several nodes at once
    out: dict[str, int] = dataclasses.field(default_factory=dict)  # GPUs out of service, per node
    nodes: PoolNodes = dataclasses.field(init=False)
    # Whether a job of a shape (nodes, GPUs per node, CPUs, memory) could ever run here: many
    # pending jobs share a shape, and the pool's nodes do not change during a pass.
    _runs: dict[tuple, bool] = dataclasses.field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        if self.shape is None:
            self.shape = NodeShape(self.capacity)
        self.nodes = PoolNodes.empty(self.shape, self.out)
        self.capacity = self.nodes.free  # its GPUs in service, within the capacity set

    @property
    def free(self) -> int:
        return self.capacity - self.used

    def could_run(self, job: PendingJob, gpu: str) -> bool:
        """Whether a job of this shape could ever run here (when all of it is free). A one-node
        job's GPU count is left to `fits`, which says how many GPUs are free."""
        shape = (job.nodes, job.gpus_per_node, job.cpus, job.memory_gb)
        if shape not in self._runs:
            refused = self.shape.refusals(
                nodes=job.nodes,
                gpus_per_node=job.gpus_per_node,
                cpus=job.cpus,
                memory_gb=job.memory_gb,
                gangs=self.gangs,
                gpu=gpu,
                cluster=self.cluster,
            )
            self._runs[shape] = not set(refused) - {"gpu_count"}
        return self._runs[shape]

    def fits(self, job: PendingJob) -> bool:
        """Whether all the job's nodes are free at once: no gang is admitted in part."""
        return self.free >= job.gpu_count and self.nodes.fits(job.nodes, job.gpus_per_node)


@dataclasses.dataclass(slots=True)
class PendingJob:
    """A pending job as admission reads it (one row of a single query; thousands per pass)."""

    id: int
    tenant_id: int
    owner_id: int
    gpu_type_id: int
    gpu_count: int
    priority: int
    created_at: datetime
    time_limit_minutes: int
    reason: str
    attempt: int
    image: str = ""
    nodes: int = 1
    gpus_per_node: int = 0
    cpus: int | None = None
    memory_gb: int | None = None
    array_id: int | None = None
    requested_cluster_id: int | None = None
    requested_region: str = ""
    # Asked of every budget above the job's tenant, in every round: worked out once.
    gpu_hours: Decimal = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        if not self.gpus_per_node:  # a one-node job described by its GPU count alone
            self.gpus_per_node = self.gpu_count // max(self.nodes, 1)
        self.gpu_hours = round_gpu_hours(Decimal(self.gpu_count) * Decimal(self.time_limit_minutes) / 60)


@dataclasses.dataclass
class Decision:
    pool: PoolState | None
    reason: str
    borrowed: int = 0
    preempt: list[int] = dataclasses.field(default_factory=list)
    needs_borrowing: bool = False
    domain: str | None = None  # the topology domain all of a gang's nodes go under
    borrow_level: int = 0  # needing to borrow: the first borrowing round that may admit it


@dataclasses.dataclass
class PassResult:
    admitted: int = 0
    waiting: int = 0
    preempted: int = 0
    decision_seconds: list[float] = dataclasses.field(default_factory=list)


class Snapshot:
    """Everything admission needs, loaded with a fixed number of queries and kept up to date in
    memory as the pass admits jobs."""

    def __init__(self, now: datetime | None = None) -> None:
        self.now = now or timezone.now()
        self.month = month_of(self.now)
        self.tenants = {t.pk: t for t in Tenant.objects.only("slug", "regions", "parent_id")}
        self.tree = TenantTree({pk: t.parent_id for pk, t in self.tenants.items()})
        self.gpu_types = dict(Pool.objects.values_list("gpu_type_id", "gpu_type__slug").distinct())
        self.quotas = {(q.tenant_id, q.gpu_type_id): q for q in Quota.objects.all()}
        self.pools: dict[int, list[PoolState]] = defaultdict(list)
        image_rules: dict[int, ImageRule | None] = {}
        out = out_of_service()  # failed hardware, and what the portal took out: not capacity
        for pool in Pool.objects.filter(cluster__enabled=True).select_related("cluster").order_by("pk"):
            cluster = pool.cluster
            if cluster.pk not in image_rules:
                image_rules[cluster.pk] = _image_rule(cluster)
            self.pools[pool.gpu_type_id].append(
                PoolState(
                    pool.pk,
                    pool.cluster_id,
                    cluster.slug,
                    cluster.region,
                    not cluster.draining,
                    pool.capacity,
                    kind=cluster.kind,
                    images=image_rules[cluster.pk],
                    shape=pool.shape(),
                    gangs=cluster.kind in GANG_KINDS,
                    out=out.get((pool.cluster_id, pool.gpu_type_id), {}),
                )
            )
        # Owners who have a POSIX account, the one their jobs run as where jobs run as their owners.
        self.posix_owners = set(Identity.objects.exclude(posix_username="").values_list("user_id", flat=True))
        self._refusals: dict[tuple[int, str], str] = {}
        self.use: Counter[tuple[int, int]] = Counter()
        self.user_use: Counter[tuple[int, int, int]] = Counter()
        holding = Job.objects.filter(state__in=HOLDING_STATES).values(
            "tenant_id", "gpu_type_id", "owner_id", "cluster_id"
        )
        pool_index = {(p.cluster_id, gt): p for gt, pools in self.pools.items() for p in pools}
        for row in holding.annotate(gpus=models.Sum("gpu_count")):
            tenant, gpu_type, gpus = row["tenant_id"], row["gpu_type_id"], row["gpus"]
            self.use[tenant, gpu_type] += gpus
            self.user_use[tenant, gpu_type, row["owner_id"]] += gpus
            pool = pool_index.get((row["cluster_id"], gpu_type))
            if pool is not None:
                pool.used += gpus
        self._occupy_nodes(pool_index)
        budgets = {b.tenant_id: b for b in Budget.objects.all()}
        # What a budget's tenant and every tenant below it spent: a department's budget caps its
        # projects together.
        spent = self.tree.roll_up(Reservation.objects.gpu_hours_by_tenant(self.month))
        self.max_priority = {tenant: b.max_priority for tenant, b in budgets.items()}
        self._borrowed_jobs: dict[int, dict[int, list[Victim]]] = {}
        self.placements: dict[int, tuple[int, str]] = {}
        self.domains: dict[int, str] = {}  # gangs placed under one topology domain
        self.admitted_jobs: dict[int, PendingJob] = {}
        self.borrowing: dict[int, int] = {}  # GPUs each admitted job borrows
        self.budget_left = {
            tenant: b.gpu_hours_per_month - spent.get(tenant, Decimal(0))
            for tenant, b in budgets.items()
            if b.hard and b.gpu_hours_per_month is not None
        }
        self.money = MoneyBudgets(
            {t: b for t, b in budgets.items() if b.hard and b.amount_per_month is not None},
            self.month,
            self.tree,
        )
        self._budget_chains: dict[int, tuple[int, ...]] = {}
        self._build_cohorts()
        # Arrays with tasks in this pass: their limit, their cluster, their tasks holding GPUs.
        self.array_limits: dict[int, int | None] = {}
        self.array_clusters: dict[int, int | None] = {}
        self.array_holding: Counter[int] = Counter()
        self.pinned: dict[int, int] = {}  # arrays this pass placed first: {array id: cluster id}
        self._array_waits: dict[tuple[int, bool, int | None], str] = {}

    def load_arrays(self, jobs: Iterable[PendingJob]) -> None:
        """What the pass needs of the arrays these jobs are tasks of (two queries, none without)."""
        ids = {job.array_id for job in jobs if job.array_id is not None}
        if not ids:
            return
        for pk, limit, cluster_id in JobArray.objects.filter(pk__in=ids).values_list(
            "pk", "max_running", "cluster_id"
        ):
            self.array_limits[pk], self.array_clusters[pk] = limit, cluster_id
        holding = Job.objects.filter(array_id__in=ids, state__in=HOLDING_STATES).values_list("array_id")
        self.array_holding.update(dict(holding.annotate(n=models.Count("id")).values_list("array_id", "n")))

    @staticmethod
    def _occupy_nodes(pool_index: dict[tuple[int, int], PoolState]) -> None:
        """Count the nodes the jobs holding GPUs take, largest per node first (one query): on
        the nodes their backend says they run on, else where admission placed them."""
        shapes = (
            Job.objects.filter(state__in=HOLDING_STATES)
            .values_list(
                "cluster_id", "gpu_type_id", "nodes", "gpus_per_node", "node_list", "topology_domain"
            )
            .annotate(jobs=models.Count("id"))
            .order_by("-gpus_per_node", "-nodes")
        )
        for cluster_id, gpu_type_id, nodes, gpus_per_node, node_list, domain, jobs in shapes:
            pool = pool_index.get((cluster_id, gpu_type_id))
            if pool is not None:
                names = node_list.split(",") if node_list and pool.nodes.topology else []
                for _ in range(jobs):
                    pool.nodes.occupy(nodes, gpus_per_node, names, domain)

    # --- the rules ------------------------------------------------------------------------------

    def effective_priority(self, job: PendingJob) -> int:
        return min(job.priority, self.max_priority.get(job.tenant_id, 0))

    def share(self, tenant_id: int, gpu_type_id: int) -> float:
        own = self.cohorts[gpu_type_id].own_nominal.get(tenant_id, 0) if gpu_type_id in self.cohorts else 0
        if (tenant_id, gpu_type_id) not in self.quotas or own == 0:
            return float("inf")
        return self.use[tenant_id, gpu_type_id] / own

    def _build_cohorts(self) -> None:
        """Per GPU type, its quotas as nested cohorts over the tenant tree, holding the capacity of
        its pools; kept current by `_use` as jobs are admitted and preempted."""
        by_type: dict[int, dict[int, Quota]] = defaultdict(dict)
        for (tenant, gpu_type), quota in self.quotas.items():
            by_type[gpu_type][tenant] = quota
        use: dict[int, Counter[int]] = defaultdict(Counter)
        for (tenant, gpu_type), gpus in self.use.items():
            use[gpu_type][tenant] += gpus
        self.cohorts: dict[int, CohortTree] = {
            gpu_type: CohortTree(
                self.tree,
                by_type.get(gpu_type, {}),
                sum(p.capacity for p in self.pools.get(gpu_type, ())),
                use[gpu_type],
            )
            for gpu_type in set(by_type) | set(self.pools)
        }

    def _use(self, tenant_id: int, gpu_type_id: int, owner_id: int, gpus: int) -> None:
        self.use[tenant_id, gpu_type_id] += gpus
        self.user_use[tenant_id, gpu_type_id, owner_id] += gpus
        cohort = self.cohorts.get(gpu_type_id)
        if cohort is not None and tenant_id in cohort.parent:
            cohort.use(tenant_id, gpus)

    def budget_chain(self, tenant_id: int) -> tuple[int, ...]:
        """The tenant and the tenants above it that have a hard budget, nearest first."""
        chain = self._budget_chains.get(tenant_id)
        if chain is None:
            chain = self._budget_chains[tenant_id] = tuple(
                t for t in self.tree.path(tenant_id) if t in self.budget_left or t in self.money.left
            )
        return chain

    def decide(self, job: PendingJob, *, may_borrow: bool = True, level: int | None = None) -> Decision:
        """Admit the job where, or why it waits. Without `may_borrow`, a job that would borrow is
        left for later (needs_borrowing); with a `level`, so is one that would make the tenant
        that many steps above the job's (0: its own) borrow more from above."""
        gpu = self.gpu_types.get(job.gpu_type_id, "this GPU type")
        tenant = self.tenants[job.tenant_id]
        limit = self.array_limits.get(job.array_id) if job.array_id is not None else None
        if limit is not None and self.array_holding[job.array_id] >= limit:
            return Decision(None, f"array limit: {limit} of its tasks at once")
        quota = self.quotas.get((job.tenant_id, job.gpu_type_id))
        if quota is None:
            return Decision(None, f"tenant {tenant.slug} has no {gpu} quota")
        cohort = self.cohorts[job.gpu_type_id]
        used = self.use[job.tenant_id, job.gpu_type_id]
        own = cohort.own_nominal[job.tenant_id]
        borrowed = max(0, used + job.gpu_count - own)
        assessed = cohort.assess(job.tenant_id, job.gpu_count) if borrowed else None
        if borrowed and not may_borrow:  # decided in the borrowing rounds, from the level it needs
            return Decision(None, "", needs_borrowing=True, borrow_level=assessed[1])
        if quota.max_gpus_per_job is not None and job.gpu_count > quota.max_gpus_per_job:
            return Decision(
                None,
                f"asks for {job.gpu_count} {gpu}; the tenant's limit per job is {quota.max_gpus_per_job}",
            )
        if quota.max_gpus_per_user is not None:
            mine = self.user_use[job.tenant_id, job.gpu_type_id, job.owner_id]
            if mine + job.gpu_count > quota.max_gpus_per_user:
                return Decision(
                    None, f"per-user limit {gpu}: {mine} of {quota.max_gpus_per_user} in use by the owner"
                )
        for holder in self.budget_chain(job.tenant_id):
            short = self.budget_shortfall(job, holder, gpu)
            if short:
                return Decision(None, short)

        if borrowed:
            refused, needed = assessed
            if refused is not None:
                return Decision(None, self._borrowing_refusal(job, gpu, used, own, *refused))
            if level is not None and needed > level:  # closer lenders first
                return Decision(None, "", needs_borrowing=True, borrow_level=needed)
        return self.place(job, borrowed)

    def budget_shortfall(self, job: PendingJob, holder: int, gpu: str) -> str:
        """Why the budget of `holder` (the job's tenant or a tenant above it) holds the job."""
        of = "" if holder == job.tenant_id else f" of {self.tenants[holder].slug}"
        left = self.budget_left.get(holder)
        if left is not None and job.gpu_hours > left:
            return f"budget{of}: {_hours(left)} GPU-h left, job needs {_hours(job.gpu_hours)}"
        short = self.money.shortfall(job, gpu, holder)
        return short.replace("budget:", f"budget{of}:", 1) if short else ""

    def _borrowing_refusal(self, job: PendingJob, gpu: str, used: int, own: int, node: int, why: str) -> str:
        cohort = self.cohorts[job.gpu_type_id]
        usage = f"tenant quota {gpu}: {used} of {own} in use"
        if cohort.nominal[job.tenant_id] != own:
            usage += f" (its own share of {cohort.nominal[job.tenant_id]})"
        if why == "idle":
            return f"{usage}, no idle GPUs to borrow"
        if node == job.tenant_id:
            return f"{usage}, borrowing limit reached"
        return f"{usage}; {self.tenants[node].slug} above it has reached its borrowing limit"

    def allowed_pools(self, job: PendingJob) -> list[PoolState]:
        return [p for p in self.resident_pools(job) if not self.refusal(p, job)]

    def resident_pools(self, job: PendingJob) -> list[PoolState]:
        """Pools of the job's GPU type accepting jobs in the regions its tenant may use, and where
        its owner asked it to run; a task of an array, on its array's cluster while that one
        accepts jobs."""
        regions = self.tenants[job.tenant_id].regions
        pools = [
            p
            for p in self.pools.get(job.gpu_type_id, ())
            if p.accepts_jobs
            and (not regions or p.region in regions)
            and job.requested_cluster_id in (None, p.cluster_id)
            and job.requested_region in ("", p.region)
        ]
        if job.array_id is not None:
            home = self.array_clusters.get(job.array_id) or self.pinned.get(job.array_id)
            if home is not None and any(p.cluster_id == home for p in pools):
                return [p for p in pools if p.cluster_id == home]
        return pools

    def where(self, job: PendingJob) -> str:
        """Where the job may run, in words: " in region eu-west", " named slurm-a", ""."""
        if job.requested_cluster_id is not None:
            slug = next(
                (
                    p.cluster
                    for ps in self.pools.values()
                    for p in ps
                    if p.cluster_id == job.requested_cluster_id
                ),
                f"#{job.requested_cluster_id}",
            )
            return f" {slug} (asked for)"
        regions = [job.requested_region] if job.requested_region else self.tenants[job.tenant_id].regions
        return f" in region {', '.join(regions)}" if regions else ""

    def refusal(self, pool: PoolState, job: PendingJob) -> str:
        """Why the pool's cluster would not run this job at all; "" if it would."""
        if pool.kind in POSIX_USER_KINDS and job.owner_id not in self.posix_owners:
            return f"{pool.cluster} runs jobs as their owner's POSIX account, and the owner has none"
        if pool.images is None:
            return f"the connection settings of {pool.cluster} are invalid"
        key = (pool.cluster_id, job.image)
        if key not in self._refusals:
            self._refusals[key] = pool.images.refusal(job.image)
        return self._refusals[key]

    def place(self, job: PendingJob, borrowed: int) -> Decision:
        gpu = self.gpu_types.get(job.gpu_type_id, "GPU")
        pools = self.allowed_pools(job)
        if not pools:
            resident = self.resident_pools(job)
            if resident:
                reasons = dict.fromkeys(self.refusal(p, job) for p in resident)
                return Decision(None, f"no cluster with {gpu} GPUs would run it: {'; '.join(reasons)}")
            return Decision(None, f"no cluster{self.where(job)} accepting jobs has {gpu} GPUs")
        pools = [p for p in pools if p.could_run(job, gpu)]
        if not pools:
            return Decision(None, f"no cluster accepting jobs has {_shape(job, gpu)} nodes")
        fitting = [p for p in pools if p.fits(job)]
        if fitting:
            return self.choose(job, fitting, gpu, borrowed)
        if borrowed == 0:
            reclaim = self.reclaim(job, pools)
            if reclaim is not None:
                return reclaim
        where = f"allowed cluster{self.where(job)}" if self.where(job) else "cluster"
        best = max(pools, key=lambda p: (p.nodes.nodes_with(job.gpus_per_node), p.free))
        usage = f"{best.used} of {best.capacity} in use on {best.cluster}"
        if job.nodes > 1 or best.free >= job.gpu_count:
            free_nodes = best.nodes.nodes_with(job.gpus_per_node)
            return Decision(
                None,
                f"no {where} has {job.nodes} node(s) with {job.gpus_per_node} free {gpu} each: "
                f"{free_nodes} on {best.cluster} ({usage})",
            )
        return Decision(None, f"no {where} has {job.gpu_count} free {gpu}: {usage}")

    @staticmethod
    def choose(job: PendingJob, fitting: list[PoolState], gpu: str, borrowed: int) -> Decision:
        """The least loaded of the pools with room; for a gang, of those with room for all its
        nodes under one switch or block if there are any (as Kueue's topology-aware scheduling
        prefers), saying so."""
        domains = {p.pool_id: p.nodes.one_domain(job.nodes, job.gpus_per_node) for p in fitting}
        within = [p for p in fitting if domains[p.pool_id] is not None]
        pool = min(within or fitting, key=lambda p: (p.used / p.capacity, p.pool_id))
        reason = f"{_shape(job, gpu)} on {pool.cluster} (least loaded)"
        domain = domains[pool.pool_id]
        if domain is not None:
            reason += f", under one {pool.nodes.level}: {domain}"
        elif job.nodes > 1 and pool.nodes.topology:
            level = pool.nodes.level
            reason += f", over several of its {level} domains: no one {level} has {job.nodes} free nodes"
        return Decision(pool, reason, borrowed=borrowed, domain=domain)

    def reclaim(self, job: PendingJob, pools: list[PoolState]) -> Decision | None:
        """Within its nominal quota, a job takes back GPUs that other tenants borrowed, walking
        the tenant tree from its own department outwards (quotas.cohorts.reclaim_order)."""
        cohort = self.cohorts[job.gpu_type_id]
        if not cohort.borrowed:
            return None  # nobody borrows this GPU type: nothing to take back
        candidates = self.borrowed_jobs(job.gpu_type_id)
        for pool in sorted(pools, key=lambda p: -p.free):
            freed, victims, nodes = pool.free, [], pool.nodes.copy()
            still_borrows: dict[tuple, int] = {}
            for side, borrows, victim in cohort.reclaim_order(
                job.tenant_id, candidates.get(pool.cluster_id, [])
            ):
                if freed >= job.gpu_count and nodes.fits(job.nodes, job.gpus_per_node):
                    break
                left = still_borrows.setdefault(side, borrows)
                if left <= 0:
                    continue  # what this side borrowed is already taken back
                still_borrows[side] = left - victim[1]
                victims.append(victim)
                freed += victim[1]
                nodes.give_back(victim[4], victim[5], victim[6] or None)
            if freed >= job.gpu_count and nodes.fits(job.nodes, job.gpus_per_node):
                gpu = self.gpu_types.get(job.gpu_type_id, "GPU")
                reason = (
                    f"{_shape(job, gpu)} on {pool.cluster}, reclaimed from {len(victims)} borrowing job(s)"
                )
                return Decision(pool, reason, preempt=[v[0] for v in victims])
        return None

    def borrowed_jobs(self, gpu_type_id: int) -> dict[int, list[Victim]]:
        """Loaded once per GPU type and pass (and kept current), not once per decision."""
        if gpu_type_id not in self._borrowed_jobs:
            self._borrowed_jobs[gpu_type_id] = borrowed_jobs(gpu_type_id)
        return self._borrowed_jobs[gpu_type_id]

    def forget_borrowed(self, gpu_type_id: int, job_id: int) -> None:
        for victims in self._borrowed_jobs.get(gpu_type_id, {}).values():
            victims[:] = [v for v in victims if v[0] != job_id]

    def record(self, job: PendingJob, decision: Decision, preempted: Iterable[Victim]) -> None:
        for job_id, gpus, tenant_id, owner_id, nodes, gpus_per_node, domain in preempted:
            self._use(tenant_id, job.gpu_type_id, owner_id, -gpus)
            decision.pool.used -= gpus
            decision.pool.nodes.give_back(nodes, gpus_per_node, domain or None)
            self.forget_borrowed(job.gpu_type_id, job_id)
        self._use(job.tenant_id, job.gpu_type_id, job.owner_id, job.gpu_count)
        decision.pool.used += job.gpu_count
        decision.pool.nodes.take(job.nodes, job.gpus_per_node, decision.domain)
        if job.array_id is not None:
            self.array_holding[job.array_id] += 1
            if self.array_clusters.get(job.array_id) is None:
                self.pinned.setdefault(job.array_id, decision.pool.cluster_id)
        for holder in self.budget_chain(job.tenant_id):
            if holder in self.budget_left:
                self.budget_left[holder] -= job.gpu_hours
            self.money.spend(job, holder)


class MoneyBudgets:
    """Hard money budgets: what is left this month after what the ledger billed and what the jobs
    now holding GPUs may still cost (their reserved GPU-hours at the GPU type's price), counting
    the budget's tenant and every tenant below it. Prices and spend come from the billing app,
    named in settings (FACTORY_BILLING_HOOKS): quotas does not import the app above it. Money is
    counted only in the budget's currency: with no exchange rate, a job priced in another
    currency has no cost to weigh against what is left, so it waits."""

    def __init__(self, budgets: dict[int, Budget], month, tree: TenantTree | None = None) -> None:
        self.left: dict[int, Decimal] = {}
        self.currency: dict[int, str] = {}
        self.hooks = import_module(settings.FACTORY_BILLING_HOOKS) if budgets else None
        if not budgets:
            return
        tree = tree or TenantTree.load()
        self.currency = {tenant_id: budget.currency for tenant_id, budget in budgets.items()}
        spent = self.hooks.money_spent(self.currency, month)
        held: dict[int, Decimal] = defaultdict(Decimal)
        below = {t for holder in budgets for t in tree.subtree(holder)}
        open_rows = Reservation.objects.open().filter(tenant_id__in=list(below), month=month)
        for tenant_id, gpu_type_id, gpu_hours in open_rows.values_list(
            "tenant_id", "gpu_type_id", "reserved_gpu_hours"
        ):
            for holder in tree.path(tenant_id):
                if holder in budgets:
                    # Held in another currency: billed in it, so never counted in this budget's spend either.
                    held[holder] += self.cost(holder, gpu_type_id, gpu_hours) or 0
        for tenant_id, budget in budgets.items():
            self.left[tenant_id] = (
                budget.amount_per_month - spent.get(tenant_id, Decimal(0)) - held[tenant_id]
            )

    def price(self, gpu_type_id: int) -> tuple[Decimal, str] | None:
        if not hasattr(self, "_prices"):
            self._prices = self.hooks.prices_per_gpu_hour() if self.hooks else {}
        return self._prices.get(gpu_type_id)

    def cost(self, holder: int, gpu_type_id: int, gpu_hours: Decimal) -> Decimal | None:
        """In the currency of `holder`'s budget; None when priced in another one (unpriced: nothing)."""
        price = self.price(gpu_type_id)
        if price is None:
            return Decimal(0)
        amount, currency = price
        return gpu_hours * amount if currency == self.currency[holder] else None

    def shortfall(self, job: PendingJob, gpu: str, holder: int | None = None) -> str:
        """Why the money budget of `holder` (default: the job's tenant) holds the job; "" if not."""
        holder = job.tenant_id if holder is None else holder
        left = self.left.get(holder)
        if left is None:
            return ""
        currency = self.currency[holder]
        need = self.cost(holder, job.gpu_type_id, job.gpu_hours)
        if need is None:
            priced_in = self.price(job.gpu_type_id)[1]
            return f"budget: {gpu} is priced in {priced_in}, not in the budget's {currency}"
        if need <= left:
            return ""
        return f"budget: {max(left, Decimal(0)):.2f} {currency} left, job may cost {need:.2f} {currency}"

    def spend(self, job: PendingJob, holder: int | None = None) -> None:
        holder = job.tenant_id if holder is None else holder
        if holder in self.left:
            self.left[holder] -= self.cost(holder, job.gpu_type_id, job.gpu_hours) or 0


def borrowed_jobs(gpu_type_id: int) -> dict[int, list[Victim]]:
    """Jobs holding borrowed GPUs, per cluster, newest first (Victim tuples)."""
    rows = (
        Reservation.objects.open()
        .filter(gpu_type_id=gpu_type_id, borrowed__gt=0, job__state__in=HOLDING_STATES)
        .order_by("-job__admitted_at", "-job_id")
        .values_list(
            "job_id",
            "job__gpu_count",
            "tenant_id",
            "job__owner_id",
            "job__nodes",
            "job__gpus_per_node",
            "job__topology_domain",
            "job__cluster_id",
        )
    )
    by_cluster: dict[int, list[Victim]] = defaultdict(list)
    for *victim, cluster_id in rows:
        by_cluster[cluster_id].append(tuple(victim))
    return by_cluster


def admission_lock() -> None:
    """Serialise admission passes across workers, for the rest of the transaction."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [ADMISSION_LOCK_ID])


def pending_jobs() -> list[PendingJob]:
    fields = [f.name for f in dataclasses.fields(PendingJob) if f.init]
    rows = Job.objects.filter(state=JobState.PENDING).values_list(*fields)
    return [PendingJob(*row) for row in rows]


def _image_rule(cluster) -> ImageRule | None:
    try:
        return cluster.adapter().image_rule
    except ValueError:  # connection settings that no longer parse: the cluster runs nothing
        return None


def admission_order(snapshot: Snapshot, jobs: list[PendingJob]):
    """Yield jobs in the platform's order across tenants: the fair share of their tenant
    (recomputed as jobs are admitted), then how long the tenant's queue has waited. Priority
    orders a tenant's own jobs only (capped by the tenant's ceiling, which the platform sets): no
    tenant's priority moves its jobs ahead of another tenant's."""
    queues: dict[tuple[int, int], list[PendingJob]] = defaultdict(list)
    for job in jobs:
        queues[job.tenant_id, job.gpu_type_id].append(job)
    waited: dict[tuple[int, int], list[tuple]] = {}
    for key, queue in queues.items():
        queue.sort(key=lambda j: (-snapshot.effective_priority(j), j.created_at, j.id))
        waited[key] = waited_since(queue)
    heap = [(snapshot.share(*key), waited[key][0], key, 0) for key in queues]
    heapq.heapify(heap)
    while heap:
        _, _, key, index = heapq.heappop(heap)
        yield queues[key][index]
        if index + 1 < len(queues[key]):
            heapq.heappush(heap, (snapshot.share(*key), waited[key][index + 1], key, index + 1))


def waited_since(queue: list[PendingJob]) -> list[tuple]:
    """For each place in a tenant's queue, the earliest submission (created, id) among the jobs
    from there on: between tenants of equal share the one whose waiting jobs waited longer goes
    first, whichever of them its own priorities put at the head."""
    earliest: list[tuple] = []
    for job in reversed(queue):
        here = (job.created_at, job.id)
        earliest.append(min(here, earliest[-1]) if earliest else here)
    return earliest[::-1]


def admit_pending() -> PassResult:
    """One full admission pass: first every job that fits within its tenant's nominal quota, in
    admission order; then, in the same order, the jobs that must borrow, those that borrow closest
    in the tenant tree first. Borrowers never take GPUs that a tenant within its guarantee would
    claim back moments later."""
    result = PassResult()
    with transaction.atomic():
        admission_lock()
        settle_released()
        held_back = dependencies.resolve()  # jobs waiting for others to end, as they said
        snapshot = Snapshot()
        pending = pending_jobs()
        snapshot.load_arrays(pending)
        waiting: dict[int, str] = {
            job.id: held_back[job.id]
            for job in pending
            if job.id in held_back and job.reason != held_back[job.id]
        }
        borrowers = []
        for job in admission_order(snapshot, [job for job in pending if job.id not in held_back]):
            level = decide_and_admit(snapshot, job, result, waiting, may_borrow=False)
            if level is not None:
                borrowers.append((job, level))
        # Borrowers in rounds along the tenant tree: first what the tenants' own subtrees lend,
        # then their departments', and so on up; the last round is the whole platform's. A job is
        # looked at again only in the round it said it may be admitted in.
        level = 0
        while borrowers:
            later = []
            for job, after in borrowers:
                needed = (
                    decide_and_admit(snapshot, job, result, waiting, level=level) if after <= level else after
                )
                if needed is not None:
                    later.append((job, needed))
            borrowers, level = later, level + 1
        result.admitted = write_admissions(snapshot)  # a job cancelled meanwhile is not admitted
        explain_waits(waiting)
    return result


def decide_and_admit(
    snapshot: Snapshot,
    job: PendingJob,
    result: PassResult,
    waiting: dict[int, str],
    *,
    may_borrow: bool = True,
    level: int | None = None,
) -> int | None:
    """Decide one job and act on it; when it must wait for a later borrowing round, the first
    round that may admit it. The tasks of an array ask for the same, so once one must wait in a
    round, the rest wait for its reason."""
    started = time.perf_counter()
    same = (job.array_id, may_borrow, level) if job.array_id is not None else None
    if same in snapshot._array_waits:
        decision = Decision(None, snapshot._array_waits[same])
    else:
        decision = snapshot.decide(job, may_borrow=may_borrow, level=level)
    if decision.needs_borrowing:
        return decision.borrow_level
    if decision.pool is None and same is not None:
        snapshot._array_waits[same] = decision.reason
    if decision.pool is None:
        if decision.reason != job.reason:
            waiting[job.id] = decision.reason
        result.waiting += 1
    elif admit(snapshot, job, decision):
        result.admitted += 1
        result.preempted += len(decision.preempt)
    result.decision_seconds.append(time.perf_counter() - started)
    return None


def admit(snapshot: Snapshot, job: PendingJob, decision: Decision) -> bool:
    """Count the job in for the rest of the pass; its state change, event and reservation are
    written with the others' at the end of the pass (a fixed number of statements)."""
    preempted = preempt(decision.preempt) if decision.preempt else []
    snapshot.placements[job.id] = (decision.pool.cluster_id, f"Admitted: {decision.reason}")
    if decision.domain is not None:
        snapshot.domains[job.id] = decision.domain
    snapshot.admitted_jobs[job.id] = job
    snapshot.borrowing[job.id] = decision.borrowed
    snapshot.record(job, decision, preempted)
    return True


def write_admissions(snapshot: Snapshot) -> int:
    admitted = lifecycle.admit_many(snapshot.placements, snapshot.domains)
    jobs = [snapshot.admitted_jobs[job_id] for job_id in admitted]
    bulk.insert_many(
        Reservation,
        {
            "job_id": admitted,
            "attempt": [job.attempt for job in jobs],
            "tenant_id": [job.tenant_id for job in jobs],
            "gpu_type_id": [job.gpu_type_id for job in jobs],
            "gpus": [job.gpu_count for job in jobs],
            "borrowed": [snapshot.borrowing[job.id] for job in jobs],
            "reserved_gpu_hours": [job.gpu_hours for job in jobs],
        },
        {"month": snapshot.month},
    )
    metrics.observe_admissions(jobs)
    for array_id, cluster_id in snapshot.pinned.items():
        JobArray.objects.filter(pk=array_id, cluster__isnull=True).update(cluster_id=cluster_id)
    return len(admitted)


def preempt(job_ids: list[int]) -> list[Victim]:
    """Send borrowing jobs back to pending, settle their reservations (the time they ran is
    recorded as preempted, not counted) and stop their backend jobs."""
    done = []
    for victim in Job.objects.filter(pk__in=job_ids):
        attempt, started_at = victim.attempt, victim.started_at
        if not lifecycle.preempt(victim, PREEMPTED_REASON):
            continue
        lost = gpu_hours_between(victim.gpu_count, started_at, timezone.now())
        Reservation.objects.open().filter(job=victim, attempt=attempt).update(
            used_gpu_hours=Decimal(0), preempted_gpu_hours=lost, settled_at=timezone.now()
        )
        done.append(
            (
                victim.pk,
                victim.gpu_count,
                victim.tenant_id,
                victim.owner_id,
                victim.nodes,
                victim.gpus_per_node,
                victim.topology_domain,
            )
        )
    return done


def explain_waits(reasons: dict[int, str], batch: int = 5000) -> None:
    """Record why jobs wait, in a few statements (no event per job: the reason is live on the page).
    Only jobs still pending are touched: one cancelled meanwhile keeps its own reason."""
    items = [(job_id, reason[:500]) for job_id, reason in reasons.items()]
    now = timezone.now()
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        bulk.update_many(
            Job,
            [job_id for job_id, _ in chunk],
            {"reason": [reason for _, reason in chunk]},
            {"updated_at": now},
            where={"state": JobState.PENDING},
        )


def _shape(job: PendingJob, gpu: str) -> str:
    """ "4 h100" for a one-node job, "2 nodes × 4 h100" for a gang."""
    if job.nodes > 1:
        return f"{job.nodes} nodes × {job.gpus_per_node} {gpu}"
    return f"{job.gpu_count} {gpu}"


def _hours(value: Decimal) -> str:
    return f"{value.quantize(Decimal('0.1')).normalize():f}"
