"""What the job lifecycle announces to apps above it (quotas readmits, billing meters)."""

from __future__ import annotations

from django.dispatch import Signal

# A job was created and waits for admission. Sent on commit with job_id.
job_submitted = Signal()
# A job stopped holding quota (ended, or went back to pending). Sent on commit with job_id,
# attempt, cluster_id, started_at and ended_at of the attempt that released, and requeued (back to
# pending).
job_released = Signal()
# A job reached a state its owner may be told about (jobs.choices.JOB_STATE_EVENTS). Sent on
# commit with job_id, owner_id, state and event_id (the JobEvent that recorded it).
job_state_changed = Signal()
