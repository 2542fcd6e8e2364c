from __future__ import annotations

from django.db import connection, models, transaction
from django.db.models.functions import Coalesce
from django.utils import timezone

from factory import bulk
from factory.querysets import TenantOwnedQuerySet, administered_ids

from .choices import AT_BACKEND_STATES, EventKind, JobState


class JobQuerySet(TenantOwnedQuerySet):
    def cancellable_by(self, user) -> JobQuerySet:
        """Its owner, its tenant's admins, and whoever may change any job (platform admins)."""
        if user.has_perm("jobs.change_job"):
            return self
        return self.filter(models.Q(owner=user) | models.Q(tenant_id__in=administered_ids(user)))

    def at_backend(self) -> JobQuerySet:
        return self.filter(state__in=AT_BACKEND_STATES)

    def with_queue_position(self) -> JobQuerySet:
        """Annotate pending jobs with their place in the queue of their GPU type: 1 + the pending
        jobs of that type ahead of them by priority, then submit time (None when not pending)."""
        ahead = (
            self.model.objects.filter(state=JobState.PENDING, gpu_type=models.OuterRef("gpu_type"))
            .filter(
                models.Q(priority__gt=models.OuterRef("priority"))
                | models.Q(priority=models.OuterRef("priority"), created_at__lt=models.OuterRef("created_at"))
            )
            .order_by()
            .values("gpu_type")
            .annotate(n=models.Count("pk"))
            .values("n")
        )
        return self.annotate(
            queue_position=models.Case(
                models.When(
                    state=JobState.PENDING,
                    then=Coalesce(models.Subquery(ahead), 0) + 1,
                ),
                default=None,
                output_field=models.IntegerField(),
            )
        )

    def admit_many(
        self, placements: dict[int, tuple[int, str]], domains: dict[int, str] | None = None
    ) -> list[int]:
        """Admit many pending jobs at once: {job id: (cluster id, message)}, and for gangs placed
        under one topology domain, {job id: domain}. The same edge as the admit edge (pending →
        admitted, an event each) in a fixed number of statements; what follows (dispatch) is
        jobs.lifecycle's. Returns the ids actually admitted: a job cancelled meanwhile is left alone."""
        domains = domains or {}
        return self._move_many(
            JobState.PENDING,
            JobState.ADMITTED,
            {pk: message for pk, (_, message) in placements.items()},
            per_job={
                "cluster_id": {pk: c for pk, (c, _) in placements.items()},
                "topology_domain": {pk: domains.get(pk, "") for pk in placements},
            },
            reason="",
            admitted_at=timezone.now(),
            dispatch_enqueued_at=timezone.now(),
        )

    def mark_submitted_many(self, submissions: dict[int, tuple[int, str, str]]) -> list[int]:
        """Record attempts of admitted jobs as accepted by their backends: {job id: (attempt,
        external id, message)}. The same edge as Job.mark_submitted (admitted → submitted, an event
        each) in a fixed number of statements. Returns the ids actually moved: a job cancelled
        meanwhile is left alone, and so is one requeued meanwhile, even if admitted again: its new
        attempt is not the one submitted."""
        return self._move_many(
            JobState.ADMITTED,
            JobState.SUBMITTED,
            {pk: message for pk, (_, _, message) in submissions.items()},
            per_job={"external_id": {pk: e for pk, (_, e, _) in submissions.items()}},
            attempts={pk: attempt for pk, (attempt, _, _) in submissions.items()},
            submitted_at=timezone.now(),
        )

    def cancel_waiting(self, reason: str) -> list[int]:
        """End the pending jobs among these as cancelled, in a fixed number of statements (the
        edge Job.cancel_before_backend takes one by one). A pending job holds nothing, so nothing
        is released. Returns the ids cancelled."""
        ids = list(self.filter(state=JobState.PENDING).values_list("pk", flat=True))
        message = f"{JobState.PENDING.label} → {JobState.CANCELLED.label}: {reason}"
        return self._move_many(
            JobState.PENDING,
            JobState.CANCELLED,
            dict.fromkeys(ids, message),
            per_job={},
            reason=reason[:500],
            ended_at=timezone.now(),
        )

    def request_backend_cancel(self, who: str = "") -> list[int]:
        """Record, once each, that the backend must stop these jobs (those at their backend, or
        claimed by a dispatcher): Job.request_backend_cancel for many, in a fixed number of
        statements. Returns the ids newly asked."""
        maybe_there = models.Q(state=JobState.ADMITTED) & ~models.Q(dispatch_claim="")
        now = timezone.now()
        with transaction.atomic(savepoint=False):
            ids = list(
                self.filter(cancel_requested_at__isnull=True)
                .filter(models.Q(state__in=AT_BACKEND_STATES) | maybe_there)
                .select_for_update()
                .values_list("pk", flat=True)
            )
            self.model.objects.filter(pk__in=ids).update(cancel_requested_at=now, cancel_enqueued_at=now)
            states = dict(self.model.objects.filter(pk__in=ids).values_list("pk", "state"))
            self._add_events(ids, EventKind.INFO, states, dict.fromkeys(ids, f"Cancel requested{who}"), now)
        return ids

    def explain_waits(self, reasons: dict[int, str]) -> list[int]:
        """Job.explain_wait for many jobs queued at their backend ({job id: why it waits}): the
        reason of each whose reason changed, and a REASON event each, in two statements on
        PostgreSQL. Returns the ids changed."""
        if not reasons:
            return []
        if connection.vendor != "postgresql":
            jobs = self.model.objects.filter(pk__in=list(reasons))
            return [job.pk for job in jobs if job.explain_wait(reasons[job.pk])]
        now = timezone.now()
        quote = connection.ops.quote_name
        ids, texts = list(reasons), [reasons[pk][:500] for pk in reasons]
        with transaction.atomic(savepoint=False), connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {quote(self.model._meta.db_table)} AS j SET reason = u.reason, updated_at = %s "
                "FROM unnest(%s::bigint[], %s::text[]) AS u(id, reason) "
                "WHERE j.id = u.id AND j.state = ANY(%s) AND j.reason <> u.reason RETURNING j.id, j.state",
                [now, ids, texts, list(AT_BACKEND_STATES)],
            )
            changed = dict(cursor.fetchall())
            waited = [pk for pk in ids if pk in changed]
            messages = {pk: f"Waiting: {reasons[pk]}" for pk in waited}
            self._add_events(waited, EventKind.REASON, changed, messages, now)
        return [pk for pk in ids if pk in changed]

    def _move_many(
        self,
        source: str,
        target: str,
        messages: dict[int, str],
        *,
        per_job: dict[str, dict[int, object]],
        attempts: dict[int, int] | None = None,
        **fields,
    ) -> list[int]:
        """Move the jobs of `messages` that are still in `source` (and in the attempt `attempts`
        gives, if any) to `target`, in their order: one locking read, one UPDATE (per_job: {field:
        {job id: value}}) and one INSERT of their events ({job id: message}). Returns the ids
        moved."""
        if not messages:
            return []
        now = timezone.now()
        with transaction.atomic(savepoint=False):
            still = {
                pk
                for pk, attempt in self.model.objects.filter(pk__in=list(messages), state=source)
                .select_for_update()
                .values_list("pk", "attempt")
                if attempts is None or attempts[pk] == attempt
            }
            moved = [pk for pk in messages if pk in still]
            if not moved:
                return []
            bulk.update_many(
                self.model,
                moved,
                {name: [by_job[pk] for pk in moved] for name, by_job in per_job.items()},
                {"state": target, "updated_at": now, **fields},
            )
            bulk.insert_many(
                self.model._meta.get_field("events").related_model,
                {"job_id": moved, "message": [messages[pk][:1000] for pk in moved]},
                {"kind": EventKind.STATE, "state": target, "at": now},
            )
        return moved

    def _add_events(
        self, ids: list[int], kind: str, states: dict[int, str], messages: dict[int, str], at
    ) -> None:
        """An event for each of these jobs (in their order), in one INSERT."""
        bulk.insert_many(
            self.model._meta.get_field("events").related_model,
            {
                "job_id": ids,
                "state": [states[pk] for pk in ids],
                "message": [messages[pk][:1000] for pk in ids],
            },
            {"kind": kind, "at": at},
        )


class JobArrayQuerySet(TenantOwnedQuerySet):
    def cancellable_by(self, user) -> JobArrayQuerySet:
        """As for jobs: the owner, the admins of its tenant or of a tenant above, and whoever may
        change any job (platform admins)."""
        if user.has_perm("jobs.change_job"):
            return self
        return self.filter(models.Q(owner=user) | models.Q(tenant_id__in=administered_ids(user)))

    def with_counts(self) -> JobArrayQuerySet:
        """Annotate each array with its tasks in each state (`n_<state>`), in one query."""
        return self.annotate(
            **{
                f"n_{state}": models.Count("tasks", filter=models.Q(tasks__state=state))
                for state in JobState.values
            }
        )


class JobTemplateQuerySet(models.QuerySet):
    def usable_by(self, user) -> JobTemplateQuerySet:
        """One's own templates, and those shared in a tenant one belongs to (still a member)."""
        if not user.is_authenticated:
            return self.none()
        shared = models.Q(shared=True, tenant__memberships__user=user)
        return self.filter(models.Q(owner=user, tenant__memberships__user=user) | shared).distinct()
