"""Open job pages are woken by the database: a NOTIFY per job from a trigger on PostgreSQL, a
refresh for what changes without an event, a poll where there are no notifications."""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.db import connection, transaction
from django.test import AsyncClient

from jobs import lifecycle, live
from jobs.choices import EventKind, JobState
from jobs.models import Job, JobEvent

from .test_views import read_sse

pytestmark = pytest.mark.django_db(transaction=True)
postgresql_only = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="LISTEN/NOTIFY is PostgreSQL's"
)


def listener() -> psycopg.Connection:
    params = connection.get_connection_params()
    for key in ("cursor_factory", "context", "prepare_threshold"):
        params.pop(key, None)
    conn = psycopg.connect(**params, autocommit=True)
    conn.execute(f"LISTEN {live.CHANNEL}")
    return conn


def notified(conn: psycopg.Connection) -> list[str]:
    return [n.payload for n in conn.notifies(timeout=0.5)]


@postgresql_only
def test_committed_events_notify_each_job_once_per_transaction(make_job):
    first, second = make_job(name="first"), make_job(name="second")
    conn = listener()
    try:
        first.record(EventKind.INFO, "checkpoint 1")
        assert notified(conn) == [str(first.pk)]

        with transaction.atomic():  # a bulk write, as dispatch and admission do
            JobEvent.objects.bulk_create(
                JobEvent(job=job, kind=EventKind.INFO, state=job.state, message=f"note {i}")
                for job in (first, second, first)
                for i in range(3)
            )
            second.record(EventKind.INFO, "and one more")
        assert sorted(notified(conn)) == sorted([str(first.pk), str(second.pk)])

        with pytest.raises(RuntimeError), transaction.atomic():
            first.record(EventKind.INFO, "never committed")
            raise RuntimeError
        assert notified(conn) == []
    finally:
        conn.close()


def test_the_refresh_sees_queue_positions_as_the_job_page_does(make_job, a100):
    jobs = [make_job(name=f"j{i}", priority=p) for i, p in enumerate((0, 5, 0, 5))]
    other = make_job(name="other", gpu_type=a100)
    lifecycle.cancel(jobs[2])
    ids = [job.pk for job in [*jobs, other]]
    now = live.current(ids)
    page = {job.pk: job for job in Job.objects.filter(pk__in=ids).with_queue_position()}
    assert {pk: shown.queue_position for pk, shown in now.items()} == {
        pk: job.queue_position for pk, job in page.items()
    }
    assert [now[job.pk].queue_position for job in jobs] == [3, 1, None, 2]
    last = JobEvent.objects.filter(job=jobs[2]).last()
    assert now[jobs[2].pk] == live.Shown(last.pk, page[jobs[2].pk].updated_at, None, JobState.CANCELLED)


async def open_stream(owner, job):
    client = AsyncClient()
    await sync_to_async(client.force_login)(owner)
    response = await client.get(f"/jobs/{job.pk}/stream/")
    return response.streaming_content


async def read_until(stream, text: str, timeout: float) -> tuple[list[dict], float]:
    """Events read until one contains `text`, and how long that took."""
    started, received = time.monotonic(), ""

    async def read():
        nonlocal received
        async for chunk in stream:
            received += chunk.decode()
            if text in received:
                return

    await asyncio.wait_for(read(), timeout)
    return read_sse(received), time.monotonic() - started


@postgresql_only
def test_an_event_reaches_an_open_stream_by_notification(owner, make_job, settings):
    # Neither the refresh nor a poll could bring the event within the test's time.
    settings.FACTORY_STREAM_REFRESH_INTERVAL = settings.FACTORY_STREAM_POLL_INTERVAL = 60

    async def scenario():
        job = await sync_to_async(make_job)()
        stream = await open_stream(owner, job)
        await read_until(stream, "event: status", timeout=10)
        await sync_to_async(job.record)(EventKind.INFO, "checkpoint saved")
        events, seconds = await read_until(stream, "checkpoint saved", timeout=5)
        assert [e["event"] for e in events] == ["timeline"] and seconds < 2
        assert live._hub.listening

    async_to_sync(scenario)()


def test_without_notifications_the_process_polls_once_for_all_pages(owner, make_job, settings, monkeypatch):
    """SQLite's way (make run): no notifications, a short poll in one query for all open pages."""
    monkeypatch.setattr(live, "notifications_available", lambda: False)
    settings.FACTORY_STREAM_POLL_INTERVAL = 0.1
    queries = []
    current = live.current
    monkeypatch.setattr(live, "current", lambda ids: queries.append(sorted(ids)) or current(ids))

    async def scenario():
        first, second = await sync_to_async(make_job)(), await sync_to_async(make_job)()
        streams = [await open_stream(owner, job) for job in (first, second, first)]
        for stream in streams:
            await read_until(stream, "event: status", timeout=10)
        await sync_to_async(second.record)(EventKind.INFO, "epoch 2 done")
        events, seconds = await read_until(streams[1], "epoch 2 done", timeout=5)
        assert [e["event"] for e in events] == ["timeline"] and seconds < 2
        assert not live._hub.listening
        assert queries and all(ids == sorted([first.pk, second.pk]) for ids in queries)

    async_to_sync(scenario)()


def test_a_queue_position_that_moved_without_an_event_reaches_the_page(owner, make_job, settings):
    settings.FACTORY_STREAM_REFRESH_INTERVAL = settings.FACTORY_STREAM_POLL_INTERVAL = 0.2

    async def scenario():
        ahead, job = await sync_to_async(make_job)(name="ahead"), await sync_to_async(make_job)(name="mine")
        stream = await open_stream(owner, job)
        events, _ = await read_until(stream, "Position 2 among pending h100 jobs", timeout=10)
        await sync_to_async(lifecycle.cancel)(ahead, owner)  # an event for the job ahead, none for this one
        events, _ = await read_until(stream, "Position 1 among pending h100 jobs", timeout=5)
        assert [e["event"] for e in events] == ["status"]

    async_to_sync(scenario)()
