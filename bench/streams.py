"""Open job pages on one web process while clients submit jobs: are they all held, how soon does
an event reach its page, and what do the open pages cost the API?

    .venv/bin/python bench/streams.py [--streams 1000] [--clients 8] [--duration 10] [--warmup 2]
                                      [--event-rate 25] [--busy-jobs 200]

Self-contained, like bench/submit.py: a fresh PostgreSQL database (`factory_bench_streams`),
migrated and seeded (a tenant, a local cluster, a member with an API token and a logged-in
session, and one pending job per stream), and the web tier started as production starts it
(bench/support/topology.py: nginx in front, gunicorn for the API, uvicorn for the streams), with
ONE process of each server.

Throughout, events are committed for `--busy-jobs` of the watched jobs, `--event-rate` per second in
all (an INSERT into the event table from this process, as a worker's Job.record does): the work the
workers do whether or not anyone watches, so both sides of the comparison carry it. Then:

1. `--clients` keep-alive clients submit jobs through the API: jobs/s without open pages.
2. `--streams` pages are opened (`GET /jobs/<id>/stream/` with the session cookie, one job each),
   and each must answer with its first status.
3. The clients submit again: jobs/s with open pages. An event's latency runs from just before its
   COMMIT to its arrival on its page.
4. The pages still open (none closed, none failed) are counted, and closed.
5. The clients submit without open pages again; steps 2 to 5 are one round (`--rounds`, 3).

Each round's rate with open pages is compared with the mean of the rates without them just before
and just after, so that a machine busier (or a database fuller) for a while counts on both sides;
the JSON reports the round with the median ratio (and every round's ratio), the latencies of all
rounds, and the fewest pages held open in any round.

Celery tasks enqueued on commit go to Redis DB 14 (purged before and after; no worker runs). At the
end it stops the server, drops the database, and prints one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import re
import resource
import sys
import tempfile
import time
from pathlib import Path

import psycopg
from support import benchdb, portal
from support.portal import HOST, Window, log
from support.topology import WebTier

DB_NAME = "factory_bench_streams"
DATABASE_URL = benchdb.url(DB_NAME)
REDIS_URL = "redis://127.0.0.1:6379/14"
TENANT = "bench-lab"
MARKER = re.compile(rb"bench event (\d+)")

# After SEED (support/portal.py): the user's session, and the jobs to watch.
WATCHED = """
from django.test import Client
from jobs import submission

browser = Client()
browser.force_login(user)
print("SESSION=" + browser.cookies["sessionid"].value)
spec = {"name": "watched", "command": "echo hi", "gpu_type": h100, "gpu_count": 1, "time_limit_minutes": 10}
jobs = [submission.submit(tenant=tenant, owner=user, spec=dict(spec))[0].pk for _ in range(COUNT)]
print("JOBS=" + ",".join(map(str, jobs)))
"""


def raise_file_limit(needed: int) -> int:
    """Each open page is a socket on both ends; the server inherits this process's limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        soft = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft


# --- the open pages -------------------------------------------------------------------------------


class Page:
    """One open job page: a stream read as it comes, noting when each bench event arrives."""

    def __init__(self, job_id: int) -> None:
        self.job_id = job_id
        self.reset()

    def reset(self) -> None:
        self.showing = False  # its first status arrived
        self.answered = asyncio.Event()  # it shows its job, or it failed
        self.closed = False
        self.failure = ""
        self.writer: asyncio.StreamWriter | None = None
        self.task: asyncio.Task | None = None

    async def follow(self, port: int, session: str, arrivals: dict[int, float]) -> None:
        try:
            reader, self.writer = await asyncio.open_connection(HOST, port)
            self.writer.write(
                f"GET /jobs/{self.job_id}/stream/ HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
                f"Cookie: sessionid={session}\r\nAccept: text/event-stream\r\n\r\n".encode()
            )
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise ValueError(head.split(b"\r\n", 1)[0].decode())
            carry = b""
            while chunk := await reader.read(65536):
                now = time.perf_counter()
                text = carry + chunk
                if not self.showing and b"event: status" in text:
                    self.showing = True
                    self.answered.set()
                for match in MARKER.finditer(text):
                    arrivals.setdefault(int(match[1]), now)
                carry = text[-64:]
            self.closed = True
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            self.failure = str(exc) or type(exc).__name__
        finally:
            self.answered.set()

    @property
    def open(self) -> bool:
        return self.showing and not self.closed and not self.failure

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def open_pages(pages: list[Page], port: int, session: str, arrivals: dict, timeout: float) -> float:
    started = time.perf_counter()
    for page in pages:
        page.task = asyncio.create_task(page.follow(port, session, arrivals))
    waiting = [asyncio.create_task(page.answered.wait()) for page in pages]
    _, late = await asyncio.wait(waiting, timeout=timeout)
    for task in late:
        task.cancel()
    return time.perf_counter() - started


# --- events, committed as a worker commits them ---------------------------------------------------


async def commit_events(
    jobs: list[int], rate: float, stop: asyncio.Event, sent: dict[int, float], rng: random.Random
) -> None:
    async with await psycopg.AsyncConnection.connect(DATABASE_URL) as conn:
        number, due = 0, time.perf_counter()
        while not stop.is_set():
            await conn.execute(
                "INSERT INTO jobs_jobevent (job_id, kind, state, message, at) "
                "VALUES (%s, 'info', 'pending', %s, now())",
                [rng.choice(jobs), f"bench event {number}"],
            )
            sent[number] = time.perf_counter()
            await conn.commit()
            number += 1
            due += rng.expovariate(rate)  # arrivals at random, `rate` per second on average
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, due - time.perf_counter()))


# --- the run --------------------------------------------------------------------------------------


def worker_status(events_pid: int) -> dict[str, int]:
    """Threads and resident memory of the events server, which holds the open pages (from /proc)."""
    status = dict(
        line.split(":", 1)
        for line in Path(f"/proc/{events_pid}/status").read_text().splitlines()
        if ":" in line
    )
    return {"threads": int(status["Threads"]), "rss_mb": int(status["VmRSS"].split()[0]) // 1024}


def percentile_ms(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return round(1000 * ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))], 1)


def describe(label: str, window: Window) -> str:
    return (
        f"{label}: {window.per_second:.1f} jobs/s, p50 {window.percentile_ms(0.5):.1f} ms, "
        f"p99 {window.percentile_ms(0.99):.1f} ms, errors {window.errors}; server CPU "
        f"{window.cpu_ms_per_job('server'):.2f} ms/job, PostgreSQL {window.cpu_ms_per_job('postgres'):.2f}; "
        f"machine {window.busy_percent():.0f}% busy; up to {window.db_connections_peak} DB connections"
    )


async def with_pages(
    pages: list[Page], load: tuple, session: str, arrivals: dict, sent: dict, timeout: float, events_pid: int
) -> tuple[Window, list[int], dict]:
    """Open the pages, submit while they are open, count those still open, close them. Returns the
    window, the events committed while it ran, and what the pages held."""
    idle = worker_status(events_pid)
    for page in pages:
        page.reset()
    seconds = await open_pages(pages, load[0], session, arrivals, timeout)
    showing = sum(page.showing for page in pages)
    held = worker_status(events_pid)
    log(
        f"Opened {len(pages)} pages in {seconds:.1f} s, {showing} show their job; the events server went "
        f"from {idle['threads']} to {held['threads']} threads, {idle['rss_mb']} to {held['rss_mb']} MB"
    )
    opened = time.perf_counter()
    window = await portal.measure(*load)
    closing = time.perf_counter()
    await asyncio.sleep(2.0)  # the last events' way to their pages
    log(describe(f"With {len(pages)} open pages", window))
    failures = [page.failure for page in pages if page.failure]
    if failures:
        log(f"{len(failures)} pages failed; the first: {failures[0]}")
    still_open = sum(page.open for page in pages)
    for page in pages:
        page.close()
    await asyncio.gather(*(page.task for page in pages if page.task))
    held.update(
        seconds=seconds, still_open=still_open, threads_idle=idle["threads"], rss_mb_idle=idle["rss_mb"]
    )
    return window, [n for n, at in sent.items() if opened <= at <= closing], held


async def drive(
    port: int, seeded: dict[str, str], args: argparse.Namespace, server_pids: list[int], events_pid: int
) -> dict:
    """Rounds of: submit without pages, then with them. The machine may be shared: each round's
    "with" is compared with the "without" on either side of it, and the median round is kept."""
    token, session = seeded["TOKEN"], seeded["SESSION"]
    jobs = [int(pk) for pk in seeded["JOBS"].split(",")]
    rng = random.Random(7)
    watch = await portal.DbWatch.open(DB_NAME)
    pages = [Page(job_id) for job_id in jobs]
    sent: dict[int, float] = {}
    arrivals: dict[int, float] = {}
    stop = asyncio.Event()
    busy = rng.sample(jobs, min(args.busy_jobs, len(jobs)))
    writer = asyncio.create_task(commit_events(busy, args.event_rate, stop, sent, rng))
    try:
        load = (port, token, TENANT, args.clients, args.warmup, args.duration, server_pids, watch)
        without = [await portal.measure(*load)]
        log(describe("Without open pages", without[-1]))
        rounds, watched = [], []
        for _ in range(args.rounds):
            window, events, held = await with_pages(
                pages, load, session, arrivals, sent, args.open_timeout, events_pid
            )
            watched += events
            without.append(await portal.measure(*load))
            log(describe("Without open pages", without[-1]))
            base = (without[-2].per_second + without[-1].per_second) / 2
            rounds.append({"with": window.per_second, "without": base, "window": window, **held})
        latencies = [arrivals[n] - sent[n] for n in watched if n in arrivals]
        missing = len(watched) - len(latencies)
        p50, p99, worst = (percentile_ms(latencies, q) for q in (0.5, 0.99, 1.0))
        log(
            f"{len(watched)} events on {len(busy)} watched jobs while pages were open: latency p50 {p50} ms, "
            f"p99 {p99} ms, max {worst} ms; {missing} missing"
        )
        ratios = [r["with"] / r["without"] for r in rounds]
        pairs = ", ".join(f"{r['with']:.1f} / {r['without']:.1f}" for r in rounds)
        log(f"Rounds, jobs/s with / without open pages: {pairs}")
        median = sorted(rounds, key=lambda r: r["with"] / r["without"])[len(rounds) // 2]
        return {
            "streams_open": min(r["still_open"] for r in rounds),
            "event_latency_p99_ms": p99,
            "submit_jobs_per_s_with_streams": round(median["with"], 1),
            "submit_jobs_per_s_without": round(median["without"], 1),
            "submit_with_to_without": round(median["with"] / median["without"], 2),
            "submit_with_to_without_by_round": [round(ratio, 2) for ratio in ratios],
            "streams_requested": len(pages),
            "streams_opened_in_s": round(max(r["seconds"] for r in rounds), 1),
            "event_latency_p50_ms": p50,
            "event_latency_max_ms": worst,
            "events_on_open_pages": len(watched),
            "events_missing": missing,
            "submit_p99_ms_with_streams": round(median["window"].percentile_ms(0.99), 1),
            "submit_errors": sum(w.errors for w in without) + sum(r["window"].errors for r in rounds),
            "server_threads_idle": median["threads_idle"],
            "server_threads_with_streams": max(r["threads"] for r in rounds),
            "server_rss_mb_idle": median["rss_mb_idle"],
            "server_rss_mb_with_streams": max(r["rss_mb"] for r in rounds),
            "db_connections_peak_with_streams": max(r["window"].db_connections_peak for r in rounds),
        }
    finally:
        stop.set()
        await writer
        for page in pages:
            page.close()
        await watch.close()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1000, help="open job pages")
    parser.add_argument("--clients", type=int, default=8, help="concurrent submitting clients")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds of submission")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each")
    parser.add_argument("--event-rate", type=float, default=25.0, help="events per second on watched jobs")
    parser.add_argument("--busy-jobs", type=int, default=200, help="watched jobs that get those events")
    parser.add_argument("--open-timeout", type=float, default=180.0, help="seconds to open all pages")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of submitting with and without")
    return parser.parse_args()


def run(args: argparse.Namespace, var_dir: Path, loop_name: str) -> dict:
    limit = raise_file_limit(2 * args.streams + 512)
    env = portal.server_env(DATABASE_URL, REDIS_URL, var_dir, FORWARDED_ALLOW_IPS=HOST)
    log(f"Creating database {DB_NAME}, migrating and seeding {args.streams} jobs to watch ...")
    benchdb.recreate(DB_NAME)
    tier = WebTier(env, var_dir, workers=1)
    try:
        seeded = portal.migrate_and_seed(env, TENANT, WATCHED.replace("COUNT", str(args.streams)))
        portal.purge_redis(REDIS_URL)
        log(f"Starting nginx → gunicorn + uvicorn, 1 process each (open files {limit}, {loop_name} client)")
        tier.start()
        events_pid = tier.events.process.pid
        result = asyncio.run(drive(tier.port, seeded, args, tier.pids(), events_pid))
        tier.stop()
        errors = 0
        for server_log in var_dir.glob("*.log"):
            count, first = portal.server_log_summary(server_log)
            if count:
                log(f"{server_log.name} logged {count} errors; the first: {first}")
            errors += count
        return {**result, "server_log_errors": errors, "celery_messages": portal.purge_redis(REDIS_URL)}
    finally:
        tier.stop()
        benchdb.drop(DB_NAME)
        portal.purge_redis(REDIS_URL)


def main() -> int:
    args = parse_args()
    loop_name = portal.install_uvloop()
    with tempfile.TemporaryDirectory(prefix="factory-bench-") as tmp:
        var_dir = Path(tmp)
        (var_dir / "staticfiles").mkdir()
        result = run(args, var_dir, loop_name)
    log(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
