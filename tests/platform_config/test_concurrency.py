"""Two applies at once, on separate PostgreSQL connections: the second waits for the first's lock,
then plans against its result."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection, connections

from factory.models import ChangeSet, Tenant
from platform_config import applying
from quotas.models import Quota

from .conftest import declare

pytestmark = pytest.mark.django_db(transaction=True)

FILE = """
gpu_types:
- {slug: h100, name: H100}
tenants:
- {slug: vision, name: Vision, quotas: {h100: {nominal: 8}}}
"""


def waiting_for_the_platform_lock() -> int:
    with connections["default"].cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
            "AND ((classid::bigint << 32) | objid::bigint) = %s",
            [applying.LOCK_KEY],
        )
        return cursor.fetchone()[0]


def test_two_applies_at_once_run_one_after_the_other(monkeypatch):
    assert connection.vendor == "postgresql"
    first_writing, release_first = threading.Event(), threading.Event()
    write = applying.Writer.write

    def held_write(self):
        if not first_writing.is_set():  # the first apply pauses with the lock held
            first_writing.set()
            assert release_first.wait(30)
        write(self)

    monkeypatch.setattr(applying.Writer, "write", held_write)
    results, errors = {}, []

    def apply(name):
        try:
            results[name] = applying.apply(declare(FILE))
        except Exception as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    first = threading.Thread(target=apply, args=("first",))
    first.start()
    assert first_writing.wait(30)
    second = threading.Thread(target=apply, args=("second",))
    second.start()
    deadline = time.monotonic() + 30
    while waiting_for_the_platform_lock() < 1:
        assert time.monotonic() < deadline, "the second apply never waited for the lock"
        time.sleep(0.05)
    assert not Tenant.objects.exists()  # the first has not committed; the second waits
    release_first.set()
    first.join(30)
    second.join(30)
    assert not errors, errors
    first_plan, first_set = results["first"]
    second_plan, second_set = results["second"]
    assert first_plan.summary() == {"create": 3, "change": 0, "delete": 0} and first_set is not None
    assert not second_plan.has_changes and second_set is None  # planned against the first's result
    assert ChangeSet.objects.count() == 1
    assert Quota.objects.get().nominal == 8
