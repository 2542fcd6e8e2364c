from __future__ import annotations

from django.db import models

# Said where the adapters, which check it again before a job reaches a backend, can see it.
from factory.adapters.base import ENV_NAME_PATTERN as ENV_NAME_PATTERN


class JobState(models.TextChoices):
    PENDING = "pending", "Pending"
    ADMITTED = "admitted", "Admitted"
    SUBMITTED = "submitted", "Submitted"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"
    TIMED_OUT = "timed_out", "Timed out"
    REJECTED = "rejected", "Rejected"


# Quota is reserved exactly while a job is in one of these states.
HOLDING_STATES = frozenset({JobState.ADMITTED, JobState.SUBMITTED, JobState.RUNNING})
# The backend knows the job; sync asks about these.
AT_BACKEND_STATES = frozenset({JobState.SUBMITTED, JobState.RUNNING})
ACTIVE_STATES = frozenset({JobState.PENDING}) | HOLDING_STATES
TERMINAL_STATES = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.TIMED_OUT, JobState.REJECTED}
)
# The ends a job that may have run reaches (not rejected): what metering looks at, in one order,
# so that its query and the index of recently ended jobs name the same list.
ENDED_STATES = [JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.TIMED_OUT]

# The lifecycle's edges. Anything else (a stale report, a double click) is refused.
TRANSITIONS: dict[str, frozenset[str]] = {
    JobState.PENDING: frozenset({JobState.ADMITTED, JobState.CANCELLED, JobState.REJECTED}),
    JobState.ADMITTED: frozenset(
        {JobState.SUBMITTED, JobState.PENDING, JobState.CANCELLED, JobState.REJECTED, JobState.FAILED}
    ),
    JobState.SUBMITTED: frozenset(
        {
            JobState.RUNNING,
            JobState.PENDING,
            JobState.SUCCEEDED,
            JobState.FAILED,
            JobState.CANCELLED,
            JobState.TIMED_OUT,
        }
    ),
    # Running → submitted: the cluster itself took the job off its GPUs and queued it again (a
    # Kueue preemption); it keeps its cluster and quota and runs again when the cluster resumes it.
    JobState.RUNNING: frozenset(
        {
            JobState.SUBMITTED,
            JobState.PENDING,
            JobState.SUCCEEDED,
            JobState.FAILED,
            JobState.CANCELLED,
            JobState.TIMED_OUT,
        }
    ),
}


class EventKind(models.TextChoices):
    STATE = "state", "State change"
    INFO = "info", "Information"
    REASON = "reason", "Waiting reason"


# Limits of a job spec, checked by the form and the API alike.
NAME_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
MAX_COMMAND_BYTES = 64 * 1024
MIN_TIME_LIMIT_MINUTES = 1
MAX_TIME_LIMIT_MINUTES = 14 * 24 * 60
MAX_ENV_VARS = 100
MAX_ENV_VALUE_BYTES = 4096
MAX_SECRETS = 50
MAX_SECRET_VALUE_BYTES = 32 * 1024
MAX_CPUS = 1024
MAX_NODES = 1024
MAX_MEMORY_GB = 4096
MIN_PRIORITY, MAX_PRIORITY = -100, 100
MAX_DEPENDENCIES = 100


class DependencyKind(models.TextChoices):
    # Slurm's --dependency=afterok / afterany.
    AFTER_OK = "after_ok", "after it succeeds"
    AFTER_ANY = "after_any", "after it ends"


class NotifyEvent(models.TextChoices):
    JOB_STARTED = "job_started", "Job started"
    JOB_SUCCEEDED = "job_succeeded", "Job succeeded"
    JOB_FAILED = "job_failed", "Job failed"
    JOB_TIMED_OUT = "job_timed_out", "Job timed out"
    BUDGET = "budget", "Budget threshold passed (tenant admins)"
    FLEET = "fleet", "GPU or node drained or resumed (platform admins)"


# The job states a job's owner may be told about, as events.
JOB_STATE_EVENTS = {
    JobState.RUNNING: NotifyEvent.JOB_STARTED,
    JobState.SUCCEEDED: NotifyEvent.JOB_SUCCEEDED,
    JobState.FAILED: NotifyEvent.JOB_FAILED,
    JobState.TIMED_OUT: NotifyEvent.JOB_TIMED_OUT,
}
# What a user who never chose is told, by e-mail: what goes wrong.
DEFAULT_NOTIFY_EVENTS = (
    NotifyEvent.JOB_FAILED,
    NotifyEvent.JOB_TIMED_OUT,
    NotifyEvent.BUDGET,
    NotifyEvent.FLEET,
)


class NotifyChannel(models.TextChoices):
    EMAIL = "email", "E-mail"
    WEBHOOK = "webhook", "Webhook"


class DeliveryState(models.TextChoices):
    PENDING = "pending", "Pending"
    SENT = "sent", "Sent"
    FAILED = "failed", "Failed"
