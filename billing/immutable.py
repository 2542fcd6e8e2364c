"""Issued money never changes. Ledger lines (UsageRecord) and issued invoices with their lines are
append-only: a correction is a new line that points at the one it corrects, and a closed month's
mistakes go on a later invoice. The models refuse to save a change; below them, on PostgreSQL, a
trigger refuses every UPDATE and DELETE of those tables, whatever issues it (a queryset's update()
or delete(), the admin, SQL by hand): migration 0005, which reads REPAIR_SETTING.

A data migration that must rewrite them (a restatement ordered by finance, a column backfilled)
says so inside its transaction with `repairing()`, which lasts until that transaction ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from django.db import connections

REPAIR_SETTING = "factory.ledger_repair"  # read by the trigger: 'on' lets a change through


@contextlib.contextmanager
def repairing(using: str = "default") -> Iterator[None]:
    """Inside a transaction: until the block or the transaction ends, its updates and deletes of
    ledger lines and invoices pass the trigger. Refused outside one."""
    connection = connections[using]
    if not connection.in_atomic_block:
        raise RuntimeError("A ledger repair runs inside a transaction (transaction.atomic()).")
    if connection.vendor != "postgresql":  # no trigger elsewhere (SQLite: development)
        yield
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT set_config(%s, 'on', true)", [REPAIR_SETTING])
    try:
        yield
    finally:
        if not connection.needs_rollback:
            with connection.cursor() as cursor:
                cursor.execute("SELECT set_config(%s, 'off', true)", [REPAIR_SETTING])
