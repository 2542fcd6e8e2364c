"""One scheduler acts at a time: two real `celery beat` processes on the real Redis, with the
shipped lock settings; the standby sends nothing until the active one is killed, then takes over."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from django.conf import settings

from .conftest import PROJECT_DIR, wait_until

pytestmark = [pytest.mark.worker, pytest.mark.django_db]

SENT = re.compile(r"Scheduler: Sending due task (\S+)")
# What the shipped settings promise: the lock runs out, and the standby's next try finds it free.
TAKEOVER_S = settings.CELERY_REDBEAT_LOCK_TIMEOUT + settings.CELERY_BEAT_MAX_LOOP_INTERVAL


class Beat:
    def __init__(self, name: str, tmp_path: Path) -> None:
        self.log_path = tmp_path / f"{name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FACTORY_BEAT_", "CELERY_REDBEAT_"))}
        db = settings.DATABASES["default"]
        # A beat stops at start when its database does not answer: it gets the test database.
        env["DATABASE_URL"] = f"postgresql://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "factory", "beat", "--loglevel=INFO"],
                cwd=PROJECT_DIR,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def sent(self) -> list[str]:
        return SENT.findall(self.log_path.read_text()) if self.log_path.exists() else []

    def log(self) -> str:
        return self.log_path.read_text()[-3000:] if self.log_path.exists() else ""

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


@pytest.fixture
def beats(tmp_path):
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    broker.flushdb()
    started: list[Beat] = []
    yield lambda name: started.append(Beat(name, tmp_path)) or started[-1]
    for beat in started:
        beat.kill()
    broker.flushdb()


def test_only_one_beat_sends_and_the_standby_takes_over_when_it_is_killed(beats):
    assert TAKEOVER_S < 60
    active = beats("active")
    wait_until(
        lambda: len(active.sent()) >= 2, 30, lambda: f"the first beat to send; its log:\n{active.log()}"
    )
    standby = beats("standby")
    # Both run: the first keeps sending, the second waits for the lock and sends nothing.
    before = len(active.sent())
    wait_until(
        lambda: "beat: Starting..." in standby.log(), 30, lambda: f"the standby to start:\n{standby.log()}"
    )
    wait_until(lambda: len(active.sent()) >= before + 4, 30, "the active beat to keep sending")
    assert standby.sent() == [], standby.log()
    assert "Acquired lock" not in standby.log()

    active.kill()
    killed = time.monotonic()
    sent_when_killed = len(active.sent())
    wait_until(
        lambda: standby.sent(),
        60,
        lambda: f"the standby to take over; its log:\n{standby.log()}",
        interval=0.1,
    )
    took_over = time.monotonic() - killed
    assert took_over < 60
    assert len(active.sent()) == sent_when_killed
    # It carries on with the whole schedule, kept in Redis, not only what happened to be due.
    wait_until(
        lambda: {"sweep", "admission"} <= set(standby.sent()), 30, lambda: f"all entries:\n{standby.log()}"
    )
