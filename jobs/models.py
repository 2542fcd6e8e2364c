"""Jobs, their lifecycle, and the append-only event log the UI streams from."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models, transaction
from django.urls import reverse
from django.utils import timezone

from factory import sealing
from factory.models import Cluster, GpuType, Tenant

from . import signals
from .choices import (
    AT_BACKEND_STATES,
    ENDED_STATES,
    HOLDING_STATES,
    JOB_STATE_EVENTS,
    MAX_CPUS,
    MAX_MEMORY_GB,
    MAX_NODES,
    MAX_PRIORITY,
    MAX_TIME_LIMIT_MINUTES,
    MIN_PRIORITY,
    MIN_TIME_LIMIT_MINUTES,
    TERMINAL_STATES,
    TRANSITIONS,
    DeliveryState,
    DependencyKind,
    EventKind,
    JobState,
    NotifyChannel,
    NotifyEvent,
)
from .querysets import JobArrayQuerySet, JobQuerySet, JobTemplateQuerySet
from .validators import (
    validate_command,
    validate_env,
    validate_image,
    validate_name,
    validate_webhook_url,
)

# What a job back in pending forgets of its last attempt: where it ran and how it was dispatched.
NEXT_ATTEMPT = {
    "cluster": None,
    "topology_domain": "",
    "external_id": "",
    "admitted_at": None,
    "submitted_at": None,
    "cancel_requested_at": None,
    "cancel_enqueued_at": None,
    "dispatch_claim": "",
    "dispatch_lease_until": None,
    "dispatch_failures": 0,
}


class JobArray(models.Model):
    """One submission of many tasks (Slurm's job arrays; a parameter sweep): each task is a Job of
    its own, with its index, which quotas, budgets, fair share and bills count like any job. At
    most `max_running` of them hold GPUs at once. Its tasks are placed on one cluster (the first
    one admitted picks it), where a backend with arrays of its own (Slurm) holds them as one
    backend job, `external_id`."""

    uid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="job_arrays")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="job_arrays")
    name = models.CharField(max_length=64, validators=[validate_name])
    # The tasks' indexes in Slurm's grammar, as few ranges as name them ("0-999", "1,3,5-7").
    indexes = models.TextField()
    size = models.PositiveIntegerField()
    max_running = models.PositiveIntegerField(
        null=True, blank=True, help_text="How many of its tasks may hold GPUs at once (none: no limit)."
    )
    # A sweep's parameter sets, in index order (each task's are also in its env).
    sweep = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    cluster = models.ForeignKey(
        Cluster, null=True, blank=True, on_delete=models.PROTECT, related_name="job_arrays"
    )
    external_id = models.CharField(max_length=128, blank=True)
    # When the backend's array was cleared of what it still held for tasks that ended without it.
    closed_at = models.DateTimeField(null=True, blank=True)

    objects = JobArrayQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.name}[{self.spec}]"

    def get_absolute_url(self) -> str:
        return reverse("jobs:array", args=[self.pk])

    @property
    def spec(self) -> str:
        """The `array` field as it was written: "0-999%50"; of a sweep, only its limit ("%4")."""
        limit = f"%{self.max_running}" if self.max_running else ""
        return limit if self.sweep is not None else self.indexes + limit

    def may_cancel(self, user) -> bool:
        return JobArray.objects.cancellable_by(user).filter(pk=self.pk).exists()

    def task_counts(self) -> dict[str, int]:
        """{state: tasks} of the states some task is in: from the with_counts() annotation, else
        counted now."""
        if hasattr(self, f"n_{JobState.PENDING}"):
            counts = {state: getattr(self, f"n_{state}") for state in JobState.values}
        else:
            counts = dict(self.tasks.order_by().values_list("state").annotate(n=models.Count("id")))
        return {state: n for state, n in counts.items() if n}


class Job(models.Model):
    uid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="jobs")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="jobs")
    name = models.CharField(max_length=64, validators=[validate_name])
    command = models.TextField(validators=[validate_command])
    image = models.CharField(max_length=512, blank=True, validators=[validate_image])
    gpu_type = models.ForeignKey(GpuType, on_delete=models.PROTECT, related_name="jobs")
    # A job runs on `nodes` nodes (a gang: started all at once, one rank per node) with
    # `gpus_per_node` GPUs and `cpus` CPUs and `memory_gb` GiB of memory on each. `gpu_count` is all
    # its GPUs (nodes × gpus_per_node), which quotas, budgets and bills count; for a one-node job
    # it is simply its GPUs.
    gpu_count = models.PositiveIntegerField(validators=[MinValueValidator(1, "Ask for at least one GPU.")])
    nodes = models.PositiveIntegerField(
        default=1,
        validators=[
            MinValueValidator(1, "Ask for at least one node."),
            MaxValueValidator(MAX_NODES, f"At most {MAX_NODES} nodes."),
        ],
    )
    gpus_per_node = models.PositiveIntegerField(
        default=1, validators=[MinValueValidator(1, "Ask for at least one GPU per node.")]
    )
    cpus = models.PositiveIntegerField(
        default=4, validators=[MinValueValidator(1), MaxValueValidator(MAX_CPUS)]
    )
    memory_gb = models.PositiveIntegerField(
        default=16, validators=[MinValueValidator(1), MaxValueValidator(MAX_MEMORY_GB)]
    )
    # The nodes the backend ran it on, as it reported them (e.g. "gpu2,gpu3").
    node_list = models.CharField(max_length=2000, blank=True)
    # The topology domain (a switch, a block) admission placed all of a gang's nodes under, which
    # its backend is asked to keep them within too; "" for none (one node, no topology, or spread).
    topology_domain = models.CharField(max_length=253, blank=True, editable=False)
    time_limit_minutes = models.PositiveIntegerField(
        default=60,
        validators=[
            MinValueValidator(MIN_TIME_LIMIT_MINUTES, "The time limit must be at least 1 minute."),
            MaxValueValidator(
                MAX_TIME_LIMIT_MINUTES, "The time limit can be at most 14 days (20160 minutes)."
            ),
        ],
    )
    priority = models.IntegerField(
        default=0, validators=[MinValueValidator(MIN_PRIORITY), MaxValueValidator(MAX_PRIORITY)]
    )
    env = models.JSONField(default=dict, blank=True, validators=[validate_env])
    # Secrets (name → value) sealed at rest; never shown back, delivered to the job only.
    secrets_sealed = models.TextField(blank=True, editable=False)
    # A task of an array: which, and its index there (FACTORY_ARRAY_INDEX).
    array = models.ForeignKey(JobArray, null=True, blank=True, on_delete=models.PROTECT, related_name="tasks")
    array_index = models.PositiveIntegerField(null=True, blank=True)
    # Where its owner asked it to run (within the tenant's regions): one cluster, or one region.
    requested_cluster = models.ForeignKey(
        Cluster, null=True, blank=True, on_delete=models.PROTECT, related_name="requested_by"
    )
    requested_region = models.CharField(max_length=64, blank=True)

    state = models.CharField(max_length=16, choices=JobState.choices, default=JobState.PENDING)
    reason = models.CharField(max_length=500, blank=True, help_text="Why the job waits, or why it ended.")
    cluster = models.ForeignKey(Cluster, null=True, blank=True, on_delete=models.PROTECT, related_name="jobs")
    external_id = models.CharField(max_length=128, blank=True)
    exit_code = models.IntegerField(null=True, blank=True)
    attempt = models.PositiveIntegerField(default=0, help_text="Times the job went back to pending.")
    platform_fault = models.BooleanField(
        default=False, help_text="Ended by the platform (node failure, outage), not by the job: not billed."
    )
    fault_requeues = models.PositiveSmallIntegerField(
        default=0, help_text="Times the job was requeued because the hardware under it failed."
    )
    preempted_seconds = models.PositiveIntegerField(
        default=0, help_text="Run time lost to preemption: recorded, not billed."
    )

    created_at = models.DateTimeField(default=timezone.now)
    admitted_at = models.DateTimeField(null=True, blank=True)
    submitted_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)
    # At most one dispatch task is outstanding per job: it is enqueued again only after this plus
    # FACTORY_DISPATCH_STALE_AFTER (its message expires by then).
    dispatch_enqueued_at = models.DateTimeField(null=True, blank=True)
    # The dispatcher that holds the claim on this attempt until the lease runs out; nobody else
    # submits it meanwhile. After a failure the lease is the backoff before the next try.
    dispatch_claim = models.CharField(max_length=32, blank=True)
    dispatch_lease_until = models.DateTimeField(null=True, blank=True)
    dispatch_failures = models.PositiveIntegerField(
        default=0, help_text="Dispatches of this attempt that failed unexpectedly."
    )
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    cancel_enqueued_at = models.DateTimeField(null=True, blank=True)

    idempotency_key = models.CharField(max_length=255, blank=True)
    idempotency_fingerprint = models.CharField(max_length=64, blank=True)

    objects = JobQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["owner", "idempotency_key"],
                condition=~models.Q(idempotency_key=""),
                name="one_job_per_idempotency_key",
            ),
            models.UniqueConstraint(
                fields=["array", "array_index"],
                condition=models.Q(array__isnull=False),
                name="one_task_per_array_index",
            ),
            models.CheckConstraint(
                condition=models.Q(array__isnull=True, array_index__isnull=True)
                | models.Q(array__isnull=False, array_index__isnull=False),
                name="job_array_task_has_index",
            ),
            models.CheckConstraint(condition=models.Q(gpu_count__gte=1), name="job_gpu_count_positive"),
            models.CheckConstraint(
                condition=models.Q(nodes__gte=1)
                & models.Q(gpus_per_node__gte=1)
                & models.Q(gpu_count=models.F("nodes") * models.F("gpus_per_node")),
                name="job_gang_shape",
            ),
            models.CheckConstraint(
                condition=models.Q(time_limit_minutes__gte=MIN_TIME_LIMIT_MINUTES)
                & models.Q(time_limit_minutes__lte=MAX_TIME_LIMIT_MINUTES),
                name="job_time_limit_in_range",
            ),
            models.CheckConstraint(
                condition=models.Q(cpus__gte=1) & models.Q(cpus__lte=MAX_CPUS), name="job_cpus_in_range"
            ),
            models.CheckConstraint(
                condition=models.Q(memory_gb__gte=1) & models.Q(memory_gb__lte=MAX_MEMORY_GB),
                name="job_memory_in_range",
            ),
            models.CheckConstraint(
                condition=models.Q(priority__gte=MIN_PRIORITY) & models.Q(priority__lte=MAX_PRIORITY),
                name="job_priority_in_range",
            ),
        ]
        indexes = [
            models.Index(fields=["state", "cluster"], name="job_state_cluster"),
            models.Index(fields=["tenant", "-created_at"], name="job_tenant_recent"),
            models.Index(fields=["owner", "-created_at"], name="job_owner_recent"),
            # Metering's safety net: the jobs that ended lately (billing.metering.unmetered_jobs),
            # without reading the whole history.
            models.Index(
                fields=["updated_at"],
                name="job_ended_recently",
                condition=models.Q(state__in=ENDED_STATES),
            ),
            # Queue positions: the pending jobs of a GPU type ahead of a job, without a scan.
            models.Index(
                fields=["gpu_type", "-priority", "created_at"],
                name="job_pending_queue",
                condition=models.Q(state="pending"),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.uid})"

    def get_absolute_url(self) -> str:
        return reverse("jobs:detail", args=[self.pk])

    @property
    def is_task(self) -> bool:
        return self.array_id is not None

    def seal_secrets(self, values: dict[str, str]) -> None:
        self.secrets_sealed = sealing.seal(values)

    def secret_values(self) -> dict[str, str]:
        """The job's secrets in the clear, for its backend to deliver to it and nothing else."""
        return sealing.unseal(self.secrets_sealed)

    @property
    def secret_names(self) -> list[str]:
        return sorted(self.secret_values())

    @property
    def dispatch_key(self) -> str:
        """What the backend knows this attempt by; a requeued job is a new submission."""
        return str(self.uid) if self.attempt == 0 else f"{self.uid}-r{self.attempt}"

    # --- derived --------------------------------------------------------------------------------

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def is_at_backend(self) -> bool:
        return self.state in AT_BACKEND_STATES

    @property
    def can_cancel(self) -> bool:
        return not self.is_terminal

    @property
    def is_gang(self) -> bool:
        return self.nodes > 1

    @property
    def ran_on(self) -> list[str]:
        return [name for name in self.node_list.split(",") if name]

    @property
    def runtime(self) -> timedelta | None:
        """How long it has run (so far, while running)."""
        if self.started_at is None:
            return None
        return (self.ended_at or timezone.now()) - self.started_at

    def may_cancel(self, user) -> bool:
        return Job.objects.cancellable_by(user).filter(pk=self.pk).exists()

    # --- the lifecycle --------------------------------------------------------------------------

    def transition(self, to: str, *, message: str = "", **fields) -> bool:
        """Move to `to` if the edge is allowed and nobody moved the job meanwhile.

        A conditional UPDATE guards against concurrent workers (row count 0: someone else got
        there first, nothing happens); the event is written in the same transaction. Returns
        whether this call made the change; repeating a transition is a no-op.
        """
        if to not in TRANSITIONS.get(self.state, ()):
            return False
        now = timezone.now()
        # No savepoint: inside a caller's transaction a failure aborts it anyway.
        with transaction.atomic(savepoint=False):
            changed = Job.objects.filter(pk=self.pk, state=self.state).update(
                state=to, updated_at=now, **fields
            )
            if changed != 1:
                self.refresh_from_db()
                return False
            previous, attempt, started_at, cluster_id = (
                self.state,
                self.attempt,
                self.started_at,
                self.cluster_id,
            )
            self.state = to
            for name, value in fields.items():
                setattr(self, name, value)
            computed = [name for name, value in fields.items() if hasattr(value, "resolve_expression")]
            if computed:
                self.refresh_from_db(fields=computed)
            event = self.record(
                EventKind.STATE, message or f"{JobState(previous).label} → {JobState(to).label}"
            )
            if to in JOB_STATE_EVENTS:
                changed_state = {
                    "job_id": self.pk,
                    "array_id": self.array_id,
                    "owner_id": self.owner_id,
                    "state": to,
                    "event_id": event.pk,
                }
                transaction.on_commit(lambda: signals.job_state_changed.send_robust(Job, **changed_state))
            if previous in HOLDING_STATES and to not in HOLDING_STATES:
                released = {
                    "job_id": self.pk,
                    "attempt": attempt,
                    "started_at": started_at if to == JobState.PENDING else self.started_at,
                    "ended_at": self.ended_at if to != JobState.PENDING else now,
                    "requeued": to == JobState.PENDING,
                    "cluster_id": cluster_id,
                }
                transaction.on_commit(lambda: signals.job_released.send_robust(Job, **released))
        return True

    def record(self, kind: str, message: str) -> JobEvent:
        return JobEvent.objects.create(job=self, kind=kind, state=self.state, message=message[:1000])

    def mark_submitted(self, external_id: str) -> bool:
        return self.transition(
            JobState.SUBMITTED,
            external_id=external_id,
            submitted_at=timezone.now(),
            message=self.submitted_message(self.cluster, external_id),
        )

    @staticmethod
    def submitted_message(cluster: Cluster, external_id: str) -> str:
        return f"Accepted by {cluster} as {external_id}"

    def mark_running(self, started_at: datetime | None) -> bool:
        return self.transition(
            JobState.RUNNING, started_at=started_at or timezone.now(), reason="", message="Running"
        )

    def finish(
        self,
        state: str,
        *,
        exit_code: int | None = None,
        reason: str = "",
        started_at: datetime | None = None,
        ended_at: datetime | None = None,
        platform_fault: bool = False,
    ) -> bool:
        if state not in TERMINAL_STATES:
            raise ValueError(f"{state} is not a terminal state")
        ended = ended_at or timezone.now()
        fields = {
            "exit_code": exit_code,
            "reason": reason[:500],
            "ended_at": ended,
            "platform_fault": platform_fault,
        }
        if self.started_at is None and started_at is not None:
            fields["started_at"] = started_at
        return self.transition(state, message=self._finish_message(state, exit_code, reason), **fields)

    def cancel_before_backend(self, user=None) -> bool:
        """Cancel a job its backend does not have yet (pending or admitted). An in-flight dispatch
        sees the cancelled state and withdraws what it submitted. Returns whether this call ended
        it; if the job moved meanwhile (say, submitted by dispatch), it is left in its new state."""
        who = f" by {user}" if user else ""
        for _ in range(3):
            if self.state not in (JobState.PENDING, JobState.ADMITTED):
                return False
            if self.finish(JobState.CANCELLED, reason=f"cancelled{who}"):
                return True
        return False

    @property
    def may_be_at_backend(self) -> bool:
        """Admitted, and a dispatcher has claimed this attempt: it may have reached its backend
        even though no submission was recorded (the dispatcher may be submitting, or have died
        after submitting)."""
        return self.state == JobState.ADMITTED and bool(self.dispatch_claim)

    def request_backend_cancel(self, user=None) -> bool:
        """Record, once, that the backend must stop this job. Returns whether this call did."""
        if not (self.is_at_backend or self.may_be_at_backend) or self.cancel_requested_at:
            return False
        now = timezone.now()
        maybe_there = models.Q(state=JobState.ADMITTED) & ~models.Q(dispatch_claim="")
        with transaction.atomic():
            changed = (
                Job.objects.filter(pk=self.pk, cancel_requested_at__isnull=True)
                .filter(models.Q(state__in=AT_BACKEND_STATES) | maybe_there)
                .update(cancel_requested_at=now, cancel_enqueued_at=now)
            )
            if not changed:
                self.refresh_from_db()
                return False
            self.cancel_requested_at = self.cancel_enqueued_at = now
            self.record(EventKind.INFO, f"Cancel requested{f' by {user}' if user else ''}")
        return True

    def requeue(self, reason: str, *, preempted: bool = False, hardware_fault: bool = False) -> bool:
        """Back to pending (preempted, refused by a backend, or on hardware that failed); quota is
        released, the job is admitted again later as a new backend submission (its next attempt)."""
        lost = 0
        if preempted and self.started_at:
            lost = int((timezone.now() - self.started_at).total_seconds())
        extra = {"fault_requeues": models.F("fault_requeues") + 1} if hardware_fault else {}
        return self.transition(
            JobState.PENDING,
            reason=reason[:500],
            **NEXT_ATTEMPT,
            started_at=None,
            attempt=models.F("attempt") + 1,
            preempted_seconds=models.F("preempted_seconds") + lost,
            message=f"Back to pending: {reason}",
            **extra,
        )

    def blame_platform(self, reason: str) -> bool:
        """A job that failed on hardware the portal then found failed: the platform's fault, so
        the attempt is not billed (metering credits what it charged). Returns whether this call
        made it so."""
        if self.state != JobState.FAILED or self.platform_fault:
            return False
        with transaction.atomic(savepoint=False):
            changed = Job.objects.filter(
                pk=self.pk, state=JobState.FAILED, attempt=self.attempt, platform_fault=False
            ).update(platform_fault=True, updated_at=timezone.now())
            if not changed:
                return False
            self.platform_fault = True
            self.record(
                EventKind.INFO, f"Failed on faulty hardware: {reason}; the platform's fault, not billed"
            )
            released = {
                "job_id": self.pk,
                "attempt": self.attempt,
                "started_at": self.started_at,
                "ended_at": self.ended_at,
                "requeued": False,
                "cluster_id": self.cluster_id,
                "platform_fault": True,
            }
            transaction.on_commit(lambda: signals.job_released.send_robust(Job, **released))
        return True

    def requeue_failed(self, reason: str) -> bool:
        """Run a job that failed on faulty hardware again, once (as Slurm requeues a job whose
        node failed): back to pending as its next attempt. Not a lifecycle edge anyone else may
        take: only the fleet's health, which knows the hardware failed, calls it."""
        if self.state != JobState.FAILED or self.fault_requeues:
            return False
        with transaction.atomic(savepoint=False):
            changed = Job.objects.filter(
                pk=self.pk, state=JobState.FAILED, attempt=self.attempt, fault_requeues=0
            ).update(
                state=JobState.PENDING,
                reason=f"requeued: {reason}"[:500],
                **NEXT_ATTEMPT,
                started_at=None,
                exit_code=None,
                ended_at=None,
                platform_fault=False,
                attempt=models.F("attempt") + 1,
                fault_requeues=models.F("fault_requeues") + 1,
                updated_at=timezone.now(),
            )
            if not changed:
                self.refresh_from_db()
                return False
            self.refresh_from_db()
            self.record(EventKind.STATE, f"Back to pending: requeued once after a hardware fault ({reason})")
        return True

    def reject(self, reason: str) -> bool:
        return self.finish(JobState.REJECTED, reason=reason)

    def dispatch_failed(self, error: str, *, max_failures: int, backoff: timedelta) -> bool:
        """An unexpected error while handing this attempt to its backend. It is retried after
        `backoff` (the lease keeps other dispatchers off until then); after `max_failures` the job
        fails as a platform fault: not billed, its quota released."""
        failures = self.dispatch_failures + 1
        if failures >= max_failures:
            return self.finish(
                JobState.FAILED,
                reason=f"dispatch failed {failures} times: {error}",
                platform_fault=True,
            )
        retry_at = timezone.now() + backoff
        reason = f"dispatch failed ({failures} of {max_failures}): {error}; retrying"[:500]
        changed = Job.objects.filter(
            pk=self.pk, state=JobState.ADMITTED, attempt=self.attempt, dispatch_failures=failures - 1
        ).update(
            dispatch_failures=failures,
            dispatch_lease_until=retry_at,
            reason=reason,
            updated_at=timezone.now(),
        )
        if changed:
            self.dispatch_failures, self.dispatch_lease_until, self.reason = failures, retry_at, reason
            self.record(EventKind.INFO, f"Dispatch failed, retrying at {retry_at:%H:%M:%S} UTC: {error}")
        return bool(changed)

    def record_nodes(self, nodes) -> None:
        """Keep the nodes the backend says the job runs on (shown on its page, used for energy)."""
        if set(nodes) < set(self.ran_on):
            return  # squeue lists a finishing job's nodes as each is released: keep the allocation
        node_list = ",".join(nodes)[:2000]
        if node_list and node_list != self.node_list:
            Job.objects.filter(pk=self.pk).update(node_list=node_list)
            self.node_list = node_list

    def explain_wait(self, reason: str) -> bool:
        """Record why a pending or queued job waits; an event only when the reason changes."""
        if reason == self.reason or self.is_terminal:
            return False
        changed = (
            Job.objects.filter(pk=self.pk, state=self.state)
            .exclude(reason=reason)
            .update(reason=reason[:500], updated_at=timezone.now())
        )
        if changed:
            self.reason = reason[:500]
            self.record(EventKind.REASON, f"Waiting: {reason}")
        return bool(changed)

    def apply_report(self, report) -> bool:
        """Bring the job in line with what its backend says. Stale reports change nothing."""
        from factory.adapters import BackendState

        if self.is_terminal or not self.is_at_backend:
            return False
        self.record_nodes(report.nodes)
        if report.state == BackendState.QUEUED:
            if self.state == JobState.RUNNING and report.reason:
                return self.transition(
                    JobState.SUBMITTED,
                    reason=report.reason[:500],
                    message=f"Requeued by the cluster: {report.reason}",
                )
            return self.explain_wait(report.reason) if report.reason else False
        if report.state == BackendState.RUNNING:
            return self.state == JobState.SUBMITTED and self.mark_running(report.started_at)
        if report.state == BackendState.LOST:
            return self.finish(JobState.FAILED, reason=f"lost by the backend: {report.reason}".strip(": "))
        if self.state == JobState.SUBMITTED and report.started_at:
            # It ran between two syncs: the timeline still shows that it ran.
            self.mark_running(report.started_at)
        terminal = {
            BackendState.SUCCEEDED: JobState.SUCCEEDED,
            BackendState.FAILED: JobState.FAILED,
            BackendState.CANCELLED: JobState.CANCELLED,
            BackendState.TIMED_OUT: JobState.TIMED_OUT,
        }[report.state]
        return self.finish(
            terminal,
            exit_code=report.exit_code,
            reason=report.reason,
            started_at=report.started_at,
            ended_at=report.ended_at,
            platform_fault=report.platform_fault,
        )

    @staticmethod
    def _finish_message(state: str, exit_code: int | None, reason: str) -> str:
        message = JobState(state).label
        if exit_code is not None and state != JobState.SUCCEEDED:
            message += f" with exit code {exit_code}"
        return f"{message}: {reason}" if reason else message


class JobDependency(models.Model):
    """`job` waits in admission until `on` succeeded (after_ok) or ended (after_any); an after_ok
    dependency that ended otherwise cancels it (jobs/dependencies.py). Only existing jobs of the
    same tenant can be named, so no cycle can form."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="dependencies")
    on = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="dependents")
    kind = models.CharField(max_length=16, choices=DependencyKind.choices)

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["job", "on"], name="one_dependency_per_pair")]

    def __str__(self) -> str:
        return f"#{self.job_id} {self.get_kind_display()} #{self.on_id}"


class JobEvent(models.Model):
    """Append-only. Its id orders the log and resumes a live stream (Last-Event-ID)."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=16, choices=EventKind.choices)
    state = models.CharField(max_length=16, choices=JobState.choices)
    message = models.CharField(max_length=1000)
    at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["job", "id"], name="jobevent_job_id")]

    def __str__(self) -> str:
        return f"{self.job_id}#{self.pk} {self.kind}: {self.message}"


# --- notifications ------------------------------------------------------------------------------


def _default_events() -> list[str]:
    from .choices import DEFAULT_NOTIFY_EVENTS

    return [str(event) for event in DEFAULT_NOTIFY_EVENTS]


class NotificationSettings(models.Model):
    """What a user wants to be told, and how. Without a row, the defaults: e-mail on failures,
    time-outs and (tenant admins) budget thresholds."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="notification_settings"
    )
    events = models.JSONField(default=_default_events)
    email = models.BooleanField(default=True)
    webhook_url = models.URLField(max_length=500, blank=True, validators=[validate_webhook_url])
    # The key webhook requests are signed with (HMAC-SHA256), sealed at rest like job secrets; shown
    # to the user once, when it is made.
    webhook_key_sealed = models.TextField(blank=True, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "notification settings"

    def __str__(self) -> str:
        return f"notifications of {self.user}"

    def webhook_key(self) -> str:
        return sealing.unseal(self.webhook_key_sealed).get("key", "")

    def set_webhook_key(self, key: str) -> None:
        self.webhook_key_sealed = sealing.seal({"key": key}) if key else ""


class Notification(models.Model):
    """One thing one user is told, once: a job's state change (its JobEvent) or a budget
    threshold (its alert). The unique source makes a repeated trigger a no-op."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="notifications")
    event = models.CharField(max_length=32, choices=NotifyEvent.choices)
    job = models.ForeignKey(
        Job, on_delete=models.CASCADE, null=True, blank=True, related_name="notifications"
    )
    source = models.CharField(max_length=64)  # "job-event:<id>", "budget-alert:<id>"
    subject = models.CharField(max_length=200)
    text = models.TextField()
    url = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-id"]
        constraints = [models.UniqueConstraint(fields=["user", "source"], name="one_notification_per_source")]

    def __str__(self) -> str:
        return f"{self.user}: {self.subject}"


class Delivery(models.Model):
    """A notification on one channel. Sent by whoever claims it (a conditional update moves
    `next_attempt_at` past the send's timeout); never sent again once sent."""

    uid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)  # X-Factory-Delivery
    notification = models.ForeignKey(Notification, on_delete=models.CASCADE, related_name="deliveries")
    channel = models.CharField(max_length=16, choices=NotifyChannel.choices)
    target = models.CharField(max_length=500)  # the address or URL, as it was when notified
    state = models.CharField(max_length=16, choices=DeliveryState.choices, default=DeliveryState.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    last_error = models.CharField(max_length=500, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["notification", "channel"], name="one_delivery_per_channel")
        ]
        indexes = [
            models.Index(
                fields=["next_attempt_at"],
                condition=models.Q(state="pending"),
                name="delivery_pending_due",
            )
        ]

    def __str__(self) -> str:
        return f"{self.notification} by {self.channel}: {self.state}"


# --- templates -------------------------------------------------------------------------------------


class JobTemplate(models.Model):
    """A job spec kept to start new jobs from: its owner's, or shared with the tenant's members.
    It holds the form's fields but the tenant and never a secret."""

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="job_templates"
    )
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="job_templates")
    name = models.CharField(max_length=64, validators=[validate_name])
    shared = models.BooleanField(default=False, help_text="The tenant's members may start from it.")
    spec = models.JSONField()
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    objects = JobTemplateQuerySet.as_manager()

    class Meta:
        ordering = ["name", "id"]
        constraints = [models.UniqueConstraint(fields=["owner", "name"], name="one_template_name_per_owner")]

    def __str__(self) -> str:
        return self.name
