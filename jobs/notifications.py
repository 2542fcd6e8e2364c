"""Telling users what happened: a job's owner when it starts, succeeds, fails or times out, a
tenant's admins when its budget passes a threshold; by e-mail and by webhook, as each chose.

- A job array is told of as one job, as Slurm mails for an array: once when its first task starts,
  once when its last task has ended, with its tasks counted by state (an array with a failed task
  failed; else one with a task timed out timed out; else it succeeded). A thousand-task sweep is
  two messages, not two thousand.

- A trigger (a JobEvent, a budget alert) makes at most one Notification per user (unique source)
  and one Delivery per channel, in one transaction; the deliveries are sent by Celery tasks on the
  `notifications` queue once it commits.
- A delivery is sent by whoever claims it: a conditional update moves its `next_attempt_at` past
  the send's timeout. A failed send is tried again after a growing pause, up to
  FACTORY_NOTIFY_MAX_ATTEMPTS, then marked failed; the job is never affected.
- The periodic sweep makes what a lost trigger did not (recent state changes) and sends what a lost
  task did not (pending deliveries whose time has come).
- Webhooks carry Slack-compatible JSON (`text`, plus structured fields), signed with the user's key:
  `X-Factory-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>">`, and
  `X-Factory-Delivery: <uuid>`, the same on every attempt of one delivery, so that a receiver can
  drop a repeat (a worker that died after sending, before recording it, sends once more).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import socket
import time
from datetime import timedelta
from urllib.parse import urlsplit

import requests
from django.conf import settings
from django.core.mail import send_mail
from django.db import IntegrityError, models, transaction
from django.utils import timezone

from .choices import (
    DEFAULT_NOTIFY_EVENTS,
    JOB_STATE_EVENTS,
    TERMINAL_STATES,
    DeliveryState,
    EventKind,
    JobState,
    NotifyChannel,
    NotifyEvent,
)
from .models import Delivery, Job, JobArray, JobEvent, Notification, NotificationSettings

log = logging.getLogger(__name__)

WEBHOOK_TIMEOUT = (5, 10)  # connect, read (seconds)
# A claimed delivery is not claimed again for this long: more than a send can take.
CLAIM_SECONDS = 60
SIGNATURE_HEADER = "X-Factory-Signature"
DELIVERY_HEADER = "X-Factory-Delivery"
EVENT_HEADER = "X-Factory-Event"


class DeliveryError(Exception):
    """A send that did not go through (said in words fit for the notifications page)."""


# --- who wants what -------------------------------------------------------------------------------


# What an array's end may be told as; which one, its tasks' states decide (array_outcome).
ARRAY_END_EVENTS = (NotifyEvent.JOB_FAILED, NotifyEvent.JOB_TIMED_OUT, NotifyEvent.JOB_SUCCEEDED)
# An array's tasks counted in this order in its summary.
SUMMARY_ORDER = (
    JobState.SUCCEEDED,
    JobState.FAILED,
    JobState.TIMED_OUT,
    JobState.CANCELLED,
    JobState.REJECTED,
)


def event_kinds(state: str, in_array: bool) -> tuple[str, ...]:
    """What a state change may be told as: its own event, or for an array's task that ended,
    whichever the array's end turns out to be."""
    if in_array and state != JobState.RUNNING:
        return ARRAY_END_EVENTS
    return (JOB_STATE_EVENTS[state],)


def channels_for(user, event: str) -> dict[str, str]:
    """{channel: target} on which this user wants to hear of `event`."""
    return targets(NotificationSettings.objects.filter(user=user).first(), user.email, event)


def targets(prefs: NotificationSettings | None, email: str, event: str) -> dict[str, str]:
    events = prefs.events if prefs else [str(e) for e in DEFAULT_NOTIFY_EVENTS]
    if event not in events:
        return {}
    found = {}
    if (prefs is None or prefs.email) and email:
        found[NotifyChannel.EMAIL] = email
    if prefs is not None and prefs.webhook_url:
        found[NotifyChannel.WEBHOOK] = prefs.webhook_url
    return found


def notify(user, event: str, source: str, subject: str, text: str, *, job: Job | None = None, url: str = ""):
    """Make the user's notification of this trigger, and its deliveries, once; send them when
    this commits. Returns the new deliveries' ids ([] if the user wants none, or was told)."""
    targets = channels_for(user, event)
    if not targets:
        return []
    try:
        with transaction.atomic():
            notification = Notification.objects.create(
                user=user, event=event, job=job, source=source, subject=subject[:200], text=text, url=url
            )
            deliveries = Delivery.objects.bulk_create(
                Delivery(notification=notification, channel=channel, target=target)
                for channel, target in targets.items()
            )
    except IntegrityError:
        return []  # told already: a repeated trigger, or the sweep after the signal
    ids = [d.pk for d in deliveries]
    transaction.on_commit(lambda: _enqueue(ids), robust=True)
    return ids


def _enqueue(delivery_ids: list[int], countdown: float = 0) -> None:
    from .tasks import deliver_notification

    for delivery_id in delivery_ids:
        deliver_notification.apply_async((delivery_id,), countdown=countdown)


# --- the triggers ---------------------------------------------------------------------------------


def on_job_state_changed(
    sender, *, owner_id: int, state: str, event_id: int, array_id: int | None = None, **kwargs
) -> None:
    """Sent on commit of a state change: hand it to a task if its owner wants to hear of it. The
    check costs two queries here; a job whose owner wants nothing costs no task."""
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.filter(pk=owner_id).first()
    if user is None:
        return
    prefs = NotificationSettings.objects.filter(user=user).first()
    if any(targets(prefs, user.email, kind) for kind in event_kinds(state, array_id is not None)):
        from .tasks import notify_job_event

        notify_job_event.delay(event_id)


def notify_job_event(event_id: int) -> list[int]:
    event = (
        JobEvent.objects.select_related("job__owner", "job__tenant", "job__cluster", "job__array")
        .filter(pk=event_id)
        .first()
    )
    if event is None or event.kind != EventKind.STATE or event.state not in JOB_STATE_EVENTS:
        return []
    job = event.job
    if job.array is not None:
        return notify_array_event(job.array, job, event)
    kind = JOB_STATE_EVENTS[event.state]
    subject, text = describe(job, event)
    return notify(
        job.owner, kind, f"job-event:{event.pk}", subject, text, job=job, url=job.get_absolute_url()
    )


def describe(job: Job, event: JobEvent) -> tuple[str, str]:
    state = JobState(event.state).label.lower()
    where = f" on {job.cluster.slug}" if job.cluster_id else ""
    subject = f"[{settings.SITE_NAME}] {job.name} (#{job.pk}) {state}"
    if event.state == JobState.FAILED and job.exit_code is not None:
        subject += f" with exit code {job.exit_code}"
    text = f"Job {job.name} (#{job.pk}) of {job.tenant.slug}{where}: {event.message}."
    return subject, text


def notify_array_event(array: JobArray, job: Job, event: JobEvent) -> list[int]:
    """The array's start (its first task's), or its end once no task of it is left to run."""
    title = f"[{settings.SITE_NAME}] {array.name}[{array.indexes}] (array #{array.pk}, {array.size} tasks)"
    where = f" on {job.cluster.slug}" if job.cluster_id else ""
    if event.state == JobState.RUNNING:
        stage, kind, subject = "started", NotifyEvent.JOB_STARTED, f"{title} started"
        text = (
            f"Job array {array.name} of {job.tenant.slug}: its first task (#{job.pk}, index "
            f"{job.array_index}) is running{where}."
        )
    else:
        counts = array.task_counts()
        if not counts.keys() <= TERMINAL_STATES:
            return []  # tasks are left to run: told when the last ends
        stage, kind = "ended", array_outcome(counts)
        summary = ", ".join(
            f"{counts[state]} {JobState(state).label.lower()}" for state in SUMMARY_ORDER if counts.get(state)
        )
        subject = f"{title} ended: {summary}"
        text = f"Job array {array.name} of {job.tenant.slug}{where}: its {array.size} tasks ended: {summary}."
    return notify(
        array.owner,
        kind,
        f"job-array:{array.pk}:{stage}",
        subject,
        text,
        job=job,
        url=array.get_absolute_url(),
    )


def array_outcome(counts: dict[str, int]) -> str:
    if counts.get(JobState.FAILED):
        return NotifyEvent.JOB_FAILED
    if counts.get(JobState.TIMED_OUT):
        return NotifyEvent.JOB_TIMED_OUT
    return NotifyEvent.JOB_SUCCEEDED


def notify_budget_threshold(alert, words: str) -> list[int]:
    """A tenant's budget passed a threshold: each of its admins who wants to hear of it."""
    from factory.choices import Role

    tenant = alert.tenant
    subject = f"[{settings.SITE_NAME}] {tenant.name}: {alert.threshold}% of this month's budget used"
    text = (
        f"{tenant.name} ({tenant.slug}) has used {words} this month ({alert.month:%B %Y}), "
        f"passing {alert.threshold}% of its budget."
    )
    sent = []
    for membership in tenant.memberships.filter(role=Role.ADMIN, user__is_active=True).select_related("user"):
        sent += notify(membership.user, NotifyEvent.BUDGET, f"budget-alert:{alert.pk}", subject, text)
    return sent


def notify_platform_admins(source: str, subject: str, text: str, *, url: str = "") -> list[int]:
    """Hardware the portal drained or resumed (fleet health): every active platform admin who
    wants to hear of it, once per `source`."""
    from django.contrib.auth import get_user_model

    sent = []
    # Platform admins: whoever may change the fleet's nodes.
    admins = get_user_model().objects.with_perm(
        "fleet.change_node", backend="django.contrib.auth.backends.ModelBackend"
    )
    for user in admins:
        sent += notify(user, NotifyEvent.FLEET, source, f"[{settings.SITE_NAME}] {subject}", text, url=url)
    return sent


# --- sending ----------------------------------------------------------------------------------------


def deliver(delivery_id: int) -> str:
    """Claim the delivery and send it: "sent", "retry" (after a pause), "failed" (for good), or
    "skipped" (sent already, or another worker holds it)."""
    now = timezone.now()
    claimed = Delivery.objects.filter(
        pk=delivery_id, state=DeliveryState.PENDING, next_attempt_at__lte=now
    ).update(next_attempt_at=now + timedelta(seconds=CLAIM_SECONDS), attempts=models.F("attempts") + 1)
    if not claimed:
        return "skipped"
    delivery = Delivery.objects.select_related("notification__user", "notification__job").get(pk=delivery_id)
    try:
        TRANSPORTS[delivery.channel](delivery)
    except DeliveryError as exc:
        return _failed_attempt(delivery, str(exc))
    Delivery.objects.filter(pk=delivery_id).update(
        state=DeliveryState.SENT, sent_at=timezone.now(), last_error=""
    )
    return "sent"


def _failed_attempt(delivery: Delivery, error: str) -> str:
    if delivery.attempts >= settings.FACTORY_NOTIFY_MAX_ATTEMPTS:
        Delivery.objects.filter(pk=delivery.pk).update(state=DeliveryState.FAILED, last_error=error[:500])
        log.warning("notification delivery %s failed for good: %s", delivery.pk, error)
        return "failed"
    pause = retry_pause(delivery.attempts)
    Delivery.objects.filter(pk=delivery.pk).update(
        last_error=error[:500], next_attempt_at=timezone.now() + timedelta(seconds=pause)
    )
    transaction.on_commit(lambda: _enqueue([delivery.pk], countdown=pause), robust=True)
    return "retry"


def retry_pause(attempts: int) -> float:
    """Exponential: base, 2 × base, 4 × base … (FACTORY_NOTIFY_RETRY_BASE, default 30 s), at most an hour."""
    return min(settings.FACTORY_NOTIFY_RETRY_BASE * 2 ** (attempts - 1), 3600.0)


def send_email(delivery: Delivery) -> None:
    notification = delivery.notification
    body = notification.text + (f"\n\n{absolute(notification.url)}\n" if notification.url else "\n")
    try:
        send_mail(notification.subject, body, settings.DEFAULT_FROM_EMAIL, [delivery.target])
    except (OSError, ConnectionError) as exc:
        raise DeliveryError(f"the mail server refused it: {exc}") from None


def send_webhook(delivery: Delivery) -> None:
    notification = delivery.notification
    refusal = webhook_refusal(delivery.target)  # the address may have changed since it was checked
    if refusal:
        raise DeliveryError(refusal)
    prefs = NotificationSettings.objects.filter(user=notification.user).first()
    key = prefs.webhook_key() if prefs else ""
    body = json.dumps(webhook_payload(notification), separators=(",", ":")).encode()
    headers = {
        "Content-Type": "application/json",
        DELIVERY_HEADER: str(delivery.uid),
        EVENT_HEADER: notification.event,
        SIGNATURE_HEADER: signature(key, body),
    }
    try:
        response = requests.post(
            delivery.target, data=body, headers=headers, timeout=WEBHOOK_TIMEOUT, allow_redirects=False
        )
    except requests.RequestException as exc:
        raise DeliveryError(f"could not reach it: {type(exc).__name__}") from None
    if not 200 <= response.status_code < 300:
        raise DeliveryError(f"it answered {response.status_code}")


TRANSPORTS = {NotifyChannel.EMAIL: send_email, NotifyChannel.WEBHOOK: send_webhook}


def webhook_payload(notification: Notification) -> dict:
    """Slack's incoming-webhook shape (`text`), with the facts for other receivers beside it."""
    payload = {
        "text": f"{notification.subject}\n{notification.text}",
        "event": notification.event,
        "created_at": notification.created_at.isoformat(),
    }
    job = notification.job
    if job is not None:
        payload["job"] = {
            "id": job.pk,
            "name": job.name,
            "tenant": job.tenant.slug,
            "state": job.state,
            "exit_code": job.exit_code,
            "url": absolute(notification.url),
        }
        if job.array_id is not None:
            array = job.array
            payload["array"] = {
                "id": array.pk,
                "name": array.name,
                "tenant": job.tenant.slug,
                "size": array.size,
                "states": dict(sorted(array.task_counts().items())),
                "url": absolute(array.get_absolute_url()),
            }
    return payload


def signature(key: str, body: bytes, at: int | None = None) -> str:
    at = int(time.time()) if at is None else at
    digest = hmac.new(key.encode(), f"{at}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={at},v1={digest}"


def new_webhook_key() -> str:
    return "whk_" + secrets.token_urlsafe(32)


def absolute(path: str) -> str:
    base = settings.FACTORY_BASE_URL.rstrip("/")
    return f"{base}{path}" if base and path.startswith("/") else path


def webhook_refusal(url: str) -> str:
    """Why the portal will not send webhooks to this address; "" if it will."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "Not a valid address."
    schemes = ("https", "http") if settings.FACTORY_WEBHOOK_ALLOW_HTTP else ("https",)
    if parts.scheme not in schemes:
        return "Use an https:// address."
    if not parts.hostname or parts.username or parts.password:
        return "Give a host name, without a user name or password."
    if settings.FACTORY_WEBHOOK_ALLOW_PRIVATE:
        return ""
    try:
        addresses = {
            info[4][0] for info in socket.getaddrinfo(parts.hostname, port or 443, type=socket.SOCK_STREAM)
        }
    except (OSError, UnicodeError):
        return f"{parts.hostname} cannot be resolved."
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if not ip.is_global:
            return f"{parts.hostname} is a private, loopback or reserved address ({ip}); use a public one."
    return ""


# --- the sweep --------------------------------------------------------------------------------------


def sweep(now=None) -> dict[str, int]:
    """Make what lost triggers did not (state changes of the last FACTORY_NOTIFY_LOOKBACK seconds
    that their owners want to hear of), and send what lost tasks did not. A fixed number of
    queries, plus one pass of notify_job_event per notification missing."""
    from django.contrib.auth import get_user_model

    now = now or timezone.now()
    since = now - timedelta(seconds=settings.FACTORY_NOTIFY_LOOKBACK)
    sources = Notification.objects.filter(created_at__gte=since - timedelta(minutes=5))
    told = _event_ids(sources.filter(source__startswith="job-event:").values_list("source", flat=True))
    told_arrays = set(sources.filter(source__startswith="job-array:").values_list("source", flat=True))
    missing = list(
        JobEvent.objects.filter(
            kind=EventKind.STATE,
            state__in=list(JOB_STATE_EVENTS),
            at__gte=since,
            at__lte=now - timedelta(seconds=10),  # the trigger's own task has had its chance
        )
        .exclude(pk__in=told)
        .order_by("pk")
        .values_list("pk", "state", "job__owner_id", "job__array_id")
    )
    candidates = _one_per_array_stage(missing, told_arrays)
    owners = {owner for _, _, owner, _ in candidates}
    prefs = {p.user_id: p for p in NotificationSettings.objects.filter(user_id__in=owners)}
    emails = dict(get_user_model().objects.filter(pk__in=owners).values_list("pk", "email"))
    made = 0
    for event_id, state, owner, array_id in candidates:
        kinds = event_kinds(state, array_id is not None)
        if any(targets(prefs.get(owner), emails.get(owner, ""), kind) for kind in kinds):
            made += len(notify_job_event(event_id))
    due = list(
        Delivery.objects.filter(state=DeliveryState.PENDING, next_attempt_at__lte=now - timedelta(seconds=5))
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[:1000]
    )
    _enqueue(due)
    return {"made": made, "resent": len(due)}


def _one_per_array_stage(events: list[tuple], told: set[str]) -> list[tuple]:
    """Events of jobs alone, each; of an array's tasks, the latest of its start and of its end not
    told yet (one pass per array, however many tasks it has)."""
    alone, arrays = [], {}
    for event in events:
        _, state, _, array_id = event
        if array_id is None:
            alone.append(event)
            continue
        source = f"job-array:{array_id}:{'started' if state == JobState.RUNNING else 'ended'}"
        if source not in told:
            arrays[source] = event  # in event order: the latest stays
    return alone + list(arrays.values())


def _event_ids(sources) -> list[int]:
    return [int(s.split(":", 1)[1]) for s in sources]
