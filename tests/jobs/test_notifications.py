"""Notifications: a job's owner told by e-mail and by signed webhook, once per event, with retries
that never touch the job. Webhooks go to a real HTTP receiver on this machine."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core import mail
from django.db import connection
from django.utils import timezone

from jobs import notifications
from jobs.choices import DeliveryState, JobState, NotifyEvent
from jobs.models import Delivery, Job, JobEvent, Notification, NotificationSettings
from tests.support import admit

pytestmark = pytest.mark.django_db


class Receiver:
    """A webhook receiver: records each request; answers `status`."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append({"headers": dict(self.headers), "body": body})
                self.send_response(receiver.status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver(settings):
    settings.FACTORY_WEBHOOK_ALLOW_PRIVATE = True  # the receiver is on this machine
    settings.FACTORY_WEBHOOK_ALLOW_HTTP = True
    server = Receiver()
    yield server
    server.server.shutdown()


@pytest.fixture
def eager(monkeypatch):
    """The tasks' work done in the caller, as a worker would do it: the notification made, then
    each delivery sent. (Celery's own eager mode would close the test's transaction.)"""
    monkeypatch.setattr("jobs.tasks.notify_job_event.delay", notifications.notify_job_event)
    monkeypatch.setattr(
        notifications, "_enqueue", lambda ids, countdown=0: [notifications.deliver(pk) for pk in ids]
    )


@pytest.fixture
def subscribed(owner, receiver):
    owner.email = "alice@example.org"
    owner.save()
    prefs = NotificationSettings(
        user=owner, events=[NotifyEvent.JOB_FAILED, NotifyEvent.JOB_STARTED], webhook_url=receiver.url
    )
    prefs.set_webhook_key("whk_test-key")
    prefs.save()
    return prefs


def fail(job: Job, exit_code: int = 3) -> Job:
    job.mark_submitted("ext-1")
    job.mark_running(None)
    job.finish(JobState.FAILED, exit_code=exit_code)
    return job


def verify(request: dict, key: str) -> bool:
    stamp, digest = (part.split("=", 1)[1] for part in request["headers"]["X-Factory-Signature"].split(","))
    expected = hmac.new(key.encode(), f"{stamp}.".encode() + request["body"], hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, digest)


def test_a_failed_job_tells_its_owner_once_by_email_and_signed_webhook(
    make_job, cluster, subscribed, receiver, eager, django_capture_on_commit_callbacks
):
    job = make_job(name="train")
    admit(job, cluster)
    with django_capture_on_commit_callbacks(execute=True):
        fail(job)
    # Started and failed: both chosen; by both channels.
    assert [m.subject for m in mail.outbox] == [
        f"[AI Factory] train (#{job.pk}) running",
        f"[AI Factory] train (#{job.pk}) failed with exit code 3",
    ]
    assert mail.outbox[1].to == ["alice@example.org"] and f"/jobs/{job.pk}/" in mail.outbox[1].body
    assert len(receiver.requests) == 2
    failed = receiver.requests[1]
    assert verify(failed, "whk_test-key") and not verify(failed, "another-key")
    payload = json.loads(failed["body"])
    assert payload["event"] == "job_failed" and "failed with exit code 3" in payload["text"]
    assert payload["job"] == {
        "id": job.pk,
        "name": "train",
        "tenant": "demo-lab",
        "state": "failed",
        "exit_code": 3,
        "url": f"/jobs/{job.pk}/",
    }
    delivery = Delivery.objects.get(notification__event="job_failed", channel="webhook")
    assert failed["headers"]["X-Factory-Delivery"] == str(delivery.uid)
    assert delivery.state == DeliveryState.SENT and delivery.attempts == 1

    # The same trigger again, and the sweep: nothing new is made or sent.
    event = job.events.filter(state=JobState.FAILED).get()
    assert notifications.notify_job_event(event.pk) == []
    JobEvent.objects.update(at=timezone.now() - timedelta(minutes=1))
    assert notifications.sweep() == {"made": 0, "resent": 0}
    assert (len(mail.outbox), len(receiver.requests), Notification.objects.count()) == (2, 2, 2)


def test_an_owner_who_chose_nothing_hears_only_of_failures_by_email(
    make_job, cluster, owner, eager, django_capture_on_commit_callbacks
):
    owner.email = "alice@example.org"
    owner.save()
    ok, bad = make_job(name="ok"), make_job(name="bad")
    for job in (ok, bad):
        admit(job, cluster)
    with django_capture_on_commit_callbacks(execute=True):
        ok.mark_submitted("1")
        ok.finish(JobState.SUCCEEDED, exit_code=0)
        fail(bad, exit_code=1)
    assert [m.subject for m in mail.outbox] == [f"[AI Factory] bad (#{bad.pk}) failed with exit code 1"]


def test_a_user_without_address_or_choice_costs_no_task(
    make_job, cluster, owner, django_capture_on_commit_callbacks, monkeypatch
):
    queued = []
    monkeypatch.setattr("jobs.tasks.notify_job_event.delay", queued.append)
    job = make_job()
    admit(job, cluster)
    with django_capture_on_commit_callbacks(execute=True):
        fail(job)
    assert queued == [] and not Notification.objects.exists()


def test_a_receiver_that_is_down_is_retried_with_growing_pauses_then_marked_failed(
    make_job, cluster, subscribed, receiver, settings, django_capture_on_commit_callbacks
):
    settings.FACTORY_NOTIFY_MAX_ATTEMPTS = 3
    receiver.status = 503
    subscribed.email = False
    subscribed.save()
    job = make_job()
    admit(job, cluster)
    fail(job)
    event = job.events.get(state=JobState.FAILED)
    with django_capture_on_commit_callbacks(execute=False) as enqueued:
        (delivery_id,) = notifications.notify_job_event(event.pk)
    assert len(enqueued) == 1

    pauses = []
    for expected in ("retry", "retry", "failed"):
        with django_capture_on_commit_callbacks(execute=False):
            before = timezone.now()
            assert notifications.deliver(delivery_id) == expected
        delivery = Delivery.objects.get(pk=delivery_id)
        pauses.append(round((delivery.next_attempt_at - before).total_seconds()))
        assert notifications.deliver(delivery_id) == "skipped"  # not before its time
        Delivery.objects.filter(pk=delivery_id).update(next_attempt_at=timezone.now())
    assert pauses[:2] == [30, 60]
    delivery.refresh_from_db()
    assert (delivery.state, delivery.attempts, delivery.last_error) == ("failed", 3, "it answered 503")
    assert len(receiver.requests) == 3
    assert len({r["headers"]["X-Factory-Delivery"] for r in receiver.requests}) == 1
    job.refresh_from_db()
    assert (job.state, job.exit_code) == (JobState.FAILED, 3)  # untouched


@pytest.mark.django_db(transaction=True)
def test_deliveries_racing_on_many_workers_send_once(make_job, cluster, subscribed, receiver):
    assert connection.vendor == "postgresql"
    subscribed.email = False
    subscribed.save()
    job = make_job()
    admit(job, cluster)
    fail(job)
    event = job.events.get(state=JobState.FAILED)
    (delivery_id,) = notifications.notify_job_event(event.pk)
    start, outcomes = threading.Barrier(8), []

    def race():
        try:
            start.wait()
            outcomes.append(notifications.deliver(delivery_id))
        finally:
            connection.close()

    threads = [threading.Thread(target=race) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["sent"] + ["skipped"] * 7
    assert len(receiver.requests) == 1


def test_the_sweep_makes_what_a_lost_trigger_did_not_and_sends_what_a_lost_task_did_not(
    make_job, cluster, subscribed, receiver, django_capture_on_commit_callbacks
):
    subscribed.email = False
    subscribed.save()
    job = make_job()
    admit(job, cluster)
    fail(job)  # in a test transaction: the on-commit trigger never runs, as if it were lost
    assert not Notification.objects.exists()
    JobEvent.objects.update(at=timezone.now() - timedelta(minutes=1))
    with django_capture_on_commit_callbacks(execute=False):
        assert notifications.sweep()["made"] == 2  # started and failed, by webhook
    Delivery.objects.update(next_attempt_at=timezone.now() - timedelta(minutes=1))
    sent = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(notifications, "_enqueue", lambda ids, countdown=0: sent.extend(ids))
        assert notifications.sweep() == {"made": 0, "resent": 2}
    assert sorted(sent) == sorted(Delivery.objects.values_list("pk", flat=True))


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://93.184.215.14/hook", "Use an https:// address."),
        ("https://127.0.0.1/hook", "private, loopback or reserved address"),
        ("https://10.2.3.4/hook", "private, loopback or reserved address"),
        ("https://169.254.169.254/latest/meta-data", "private, loopback or reserved address"),
        ("https://[::1]/hook", "private, loopback or reserved address"),
        ("https://localhost/hook", "private, loopback or reserved address"),
        ("https://user:pw@93.184.215.14/hook", "without a user name or password"),
        ("https://no-such-host.invalid/hook", "cannot be resolved"),
        ("javascript:alert(1)", "Enter a valid URL."),
    ],
)
def test_a_webhook_to_a_private_or_plain_http_address_is_refused(client, owner, url, message):
    client.force_login(owner)
    response = client.post(
        "/account/notifications/", {"events": ["job_failed"], "email": "on", "webhook_url": url}
    )
    assert response.status_code == 400
    assert message in response.content.decode()
    assert not NotificationSettings.objects.exists()


def test_the_signing_key_is_shown_once_and_sealed_and_deliveries_are_listed(client, owner, make_job, cluster):
    client.force_login(owner)
    data = {"events": ["job_failed", "job_started"], "webhook_url": "https://93.184.215.14/hook"}
    response = client.post("/account/notifications/", data)
    assert response.status_code == 200
    prefs = NotificationSettings.objects.get(user=owner)
    key = prefs.webhook_key()
    assert key.startswith("whk_") and key in response.content.decode()
    assert key not in prefs.webhook_key_sealed and prefs.email is False
    page = client.get("/account/notifications/").content.decode()
    assert key not in page and "Save and make a new signing key" in page
    # Saving again keeps the key; asking for a new one replaces it (shown once, again).
    client.post("/account/notifications/", data)
    assert NotificationSettings.objects.get(user=owner).webhook_key() == key
    rotated = client.post("/account/notifications/", {**data, "rotate_key": "1"}).content.decode()
    new_key = NotificationSettings.objects.get(user=owner).webhook_key()
    assert new_key != key and new_key in rotated

    job = make_job(name="shown")
    admit(job, cluster)
    fail(job)
    notification = Notification.objects.create(
        user=owner, event="job_failed", job=job, source="job-event:1", subject="shown failed", text="x"
    )
    Delivery.objects.create(
        notification=notification,
        channel="webhook",
        target="https://x",
        state="failed",
        attempts=6,
        last_error="it answered 503",
    )
    page = client.get("/account/notifications/").content.decode()
    assert (
        "shown failed" in page and "Webhook: Failed" in page and "after 6 attempts: it answered 503" in page
    )


# --- arrays: told of the array as a whole, as Slurm mails for one ------------------------------------


@pytest.fixture
def sweep3(tenant, owner, h100, cluster):
    from tests.jobs.test_arrays import make_array

    array = make_array(tenant, owner, h100, "0-2", name="sweep")
    tasks = list(array.tasks.order_by("array_index"))
    for task in tasks:
        admit(task, cluster)
        task.mark_submitted(f"ext-{task.array_index}")
    return array, tasks


def test_an_array_tells_its_owner_when_it_starts_and_once_when_all_its_tasks_have_ended(
    sweep3, subscribed, receiver, eager, django_capture_on_commit_callbacks
):
    array, (first, second, third) = sweep3
    with django_capture_on_commit_callbacks(execute=True):
        first.mark_running(None)
        second.mark_running(None)
        third.mark_running(None)
        first.finish(JobState.SUCCEEDED, exit_code=0)
        second.finish(JobState.FAILED, exit_code=2)
    assert [m.subject for m in mail.outbox] == [
        f"[AI Factory] sweep[0-2] (array #{array.pk}, 3 tasks) started"
    ]
    with django_capture_on_commit_callbacks(execute=True):
        third.finish(JobState.SUCCEEDED, exit_code=0)
    assert [m.subject for m in mail.outbox][1:] == [
        f"[AI Factory] sweep[0-2] (array #{array.pk}, 3 tasks) ended: 2 succeeded, 1 failed"
    ]
    assert f"/jobs/arrays/{array.pk}/" in mail.outbox[1].body
    payload = json.loads(receiver.requests[-1]["body"])
    assert payload["event"] == "job_failed"  # one failed: the array failed, as in Slurm
    assert payload["array"] == {
        "id": array.pk,
        "name": "sweep",
        "tenant": "demo-lab",
        "size": 3,
        "states": {"failed": 1, "succeeded": 2},
        "url": notifications.absolute(f"/jobs/arrays/{array.pk}/"),
    }
    assert Notification.objects.count() == 2 and len(receiver.requests) == 2


def test_an_array_that_ended_well_is_told_to_who_wants_successes_only(
    sweep3, owner, eager, django_capture_on_commit_callbacks
):
    owner.email = "alice@example.org"
    owner.save()
    NotificationSettings.objects.create(user=owner, events=[NotifyEvent.JOB_SUCCEEDED])
    array, tasks = sweep3
    with django_capture_on_commit_callbacks(execute=True):
        for task in tasks:
            task.mark_running(None)
            task.finish(JobState.SUCCEEDED, exit_code=0)
    assert [m.subject for m in mail.outbox] == [
        f"[AI Factory] sweep[0-2] (array #{array.pk}, 3 tasks) ended: 3 succeeded"
    ]


def test_a_failure_earlier_in_an_array_is_told_though_its_last_task_succeeded(
    sweep3, owner, eager, django_capture_on_commit_callbacks
):
    owner.email = "alice@example.org"  # the default choice: failures only
    owner.save()
    array, (first, second, third) = sweep3
    with django_capture_on_commit_callbacks(execute=True):
        for task in (first, second, third):
            task.mark_running(None)
        first.finish(JobState.TIMED_OUT)
        second.finish(JobState.CANCELLED)
        third.finish(JobState.SUCCEEDED, exit_code=0)
    assert [m.subject for m in mail.outbox] == [
        f"[AI Factory] sweep[0-2] (array #{array.pk}, 3 tasks) ended: 1 succeeded, 1 timed out, 1 cancelled"
    ]
    assert Notification.objects.get().event == NotifyEvent.JOB_TIMED_OUT


def test_the_sweep_makes_a_lost_array_notification_once_with_one_pass_per_array(
    sweep3, subscribed, receiver, eager, monkeypatch
):
    array, tasks = sweep3
    for task in tasks:  # the triggers are lost: no on-commit callbacks run
        task.mark_running(None)
        task.finish(JobState.FAILED if task.array_index == 1 else JobState.SUCCEEDED, exit_code=0)
    JobEvent.objects.update(at=timezone.now() - timedelta(minutes=1))
    passes = []
    real = notifications.notify_job_event
    monkeypatch.setattr(notifications, "notify_job_event", lambda pk: passes.append(pk) or real(pk))
    assert notifications.sweep()["made"] == 4  # started and ended, each by e-mail and webhook
    assert len(passes) == 2  # one pass for each, not one for each of the six events
    assert notifications.sweep() == {"made": 0, "resent": 0}
    assert len(passes) == 2
    assert sorted(n.source for n in Notification.objects.all()) == [
        f"job-array:{array.pk}:ended",
        f"job-array:{array.pk}:started",
    ]
