"""What wakes an open job page's event stream, so that between events the page holds neither a
thread nor a database connection of the web process.

Events are JobEvent rows. On PostgreSQL a trigger (migration 0004) sends `NOTIFY job_events
'<job id>'` when they are committed, whatever wrote them. Each web process keeps one connection
listening (outside the pool) and wakes the streams that follow that job; a woken stream reads its
new rows on one of a few threads shared by all streams, and the connection goes straight back to
the pool. A notification is sent only on commit, so a woken stream always finds its rows.

Some of a page changes without an event: the place in the queue, a wait reason admission writes
in bulk, the run time and cost of a running job. Every FACTORY_STREAM_REFRESH_INTERVAL seconds one
query for all jobs followed in the process compares them with what each stream last showed, and
wakes the streams whose job moved. It also catches events missed while the listening connection
was down. On SQLite, or until listening works, that query runs every FACTORY_STREAM_POLL_INTERVAL
seconds and is the only source of wake-ups: a short poll, one query per process, not per page.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import psycopg
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError, connections

from .choices import JobState
from .models import Job, JobEvent

log = logging.getLogger(__name__)

CHANNEL = "job_events"  # the trigger's channel (migration 0004)
# How long a new stream waits for the listening connection before it relies on polling.
LISTEN_TIMEOUT = 5.0
# Seconds before listening again after the connection failed.
RECONNECT_DELAY = 2.0

T = TypeVar("T")
_executor: ThreadPoolExecutor | None = None


def release_connections() -> None:
    """Give this thread's database connections back (to the pool, on PostgreSQL). A connection
    inside a transaction is left alone: it is not ours to end (a test's, for one)."""
    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:
            connection.close()


async def briefly(func: Callable[..., T], *args: Any) -> T:
    """Run a synchronous step of a stream on the threads all streams share (a few per process,
    FACTORY_STREAM_THREADS), and give its database connection back as soon as it returns."""
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(settings.FACTORY_STREAM_THREADS, thread_name_prefix="stream")

    def step() -> T:
        try:
            return func(*args)
        finally:
            release_connections()

    return await sync_to_async(step, thread_sensitive=False, executor=_executor)()


def notifications_available() -> bool:
    """Whether the database wakes streams itself (PostgreSQL, by NOTIFY); elsewhere they poll."""
    return connections["default"].vendor == "postgresql"


@dataclass(frozen=True)
class Shown:
    """What a page shows of its job, in the terms the refresh can check in one query."""

    last_event: int
    updated_at: datetime | None
    queue_position: int | None
    state: str

    def outdated_by(self, now: Shown) -> bool:
        return (
            now.last_event > self.last_event
            or (now.updated_at, now.queue_position, now.state)
            != (self.updated_at, self.queue_position, self.state)
            or now.state == JobState.RUNNING  # its run time and cost go on
        )


def current(job_ids: list[int]) -> dict[int, Shown]:
    """The jobs as the refresh compares them, in one statement. The queue position is the one
    JobQuerySet.with_queue_position gives (1 + the pending jobs of the same GPU type ahead by
    priority, then submit time), from a window over the pending jobs rather than a count per job."""
    job, event = Job._meta.db_table, JobEvent._meta.db_table
    marks = ", ".join(["%s"] * len(job_ids))
    rows = Job.objects.raw(
        f"SELECT j.id, j.state, j.updated_at, q.position, "
        f"(SELECT MAX(e.id) FROM {event} e WHERE e.job_id = j.id) AS last_event "
        f"FROM {job} j LEFT JOIN ("
        f"  SELECT id, RANK() OVER (PARTITION BY gpu_type_id ORDER BY priority DESC, created_at) AS position"
        f"  FROM {job} WHERE state = %s"
        f") q ON q.id = j.id WHERE j.id IN ({marks})",
        [JobState.PENDING, *job_ids],
    )
    return {row.pk: Shown(row.last_event or 0, row.updated_at, row.position, row.state) for row in rows}


@dataclass(eq=False)
class Follower:
    """One open stream's place in the hub."""

    job_id: int
    shown: Shown | None = None  # set by the stream after each look; None until the first
    woken: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait(self, timeout: float | None) -> bool:
        """Until the job may have changed (True), or `timeout` seconds (False)."""
        try:
            await asyncio.wait_for(self.woken.wait(), timeout)
        except TimeoutError:
            return False
        self.woken.clear()
        return True


class Hub:
    """The open streams of one event loop (a web process) and what wakes them. It listens and
    refreshes only while a stream is open."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.followers: dict[int, set[Follower]] = {}
        self.listening = False
        self.settled = asyncio.Event()  # the first attempt to listen is over, either way
        self.tasks: list[asyncio.Task] = []

    @contextlib.asynccontextmanager
    async def follow(self, job_id: int) -> AsyncIterator[Follower]:
        """A stream follows its job inside this block. On return from entering it, an event
        committed from then on wakes the follower (or, without notifications, the next poll does)."""
        follower = Follower(job_id)
        self.followers.setdefault(job_id, set()).add(follower)
        try:
            self.start()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.settled.wait(), LISTEN_TIMEOUT)
            yield follower
        finally:
            group = self.followers.get(job_id, set())
            group.discard(follower)
            if not group:
                self.followers.pop(job_id, None)
            if not self.followers:
                self.stop()

    def start(self) -> None:
        if self.tasks:
            return
        if notifications_available():
            self.tasks.append(self.loop.create_task(self.listen()))
        else:
            self.settled.set()
        self.tasks.append(self.loop.create_task(self.refresh()))

    def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        self.tasks = []
        self.listening = False
        self.settled = asyncio.Event()

    def wake(self, job_id: int) -> None:
        for follower in self.followers.get(job_id, ()):
            follower.woken.set()

    async def listen(self) -> None:
        params = connections["default"].get_connection_params()
        for key in ("cursor_factory", "context", "prepare_threshold"):  # Django's, for its own cursors
            params.pop(key, None)
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(**params, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self.listening = True
                    self.settled.set()
                    async for notify in conn.notifies():
                        if notify.payload.isdigit():
                            self.wake(int(notify.payload))
            except (psycopg.Error, OSError) as exc:
                log.warning("Not listening for job events (%s); open pages poll until it works again", exc)
            self.listening = False
            self.settled.set()
            await asyncio.sleep(RECONNECT_DELAY)

    async def refresh(self) -> None:
        while True:
            if self.listening:
                await asyncio.sleep(settings.FACTORY_STREAM_REFRESH_INTERVAL)
            else:
                await asyncio.sleep(settings.FACTORY_STREAM_POLL_INTERVAL)
            if not self.followers:
                continue
            try:
                now = await briefly(current, list(self.followers))
            except DatabaseError as exc:
                log.warning("Could not refresh the open job pages: %s", exc)
                continue
            for job_id, shown in now.items():
                for follower in self.followers.get(job_id, ()):
                    if follower.shown is not None and follower.shown.outdated_by(shown):
                        follower.woken.set()


_hub: Hub | None = None


def follow(job_id: int) -> contextlib.AbstractAsyncContextManager[Follower]:
    """Follow a job from an open stream (see Hub.follow). One hub per event loop: a web process
    has one; tests run each scenario in a loop of its own."""
    global _hub
    loop = asyncio.get_running_loop()
    if _hub is None or _hub.loop is not loop:
        _hub = Hub(loop)
    return _hub.follow(job_id)
