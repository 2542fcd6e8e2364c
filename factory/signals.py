"""Signals of the bottom app for the apps above it."""

from __future__ import annotations

from collections import defaultdict

from django.dispatch import Signal

# The demo tenant, GPU types and clusters exist (sent by `seed_demo`, inside its transaction):
# apps above add their own demo data (quotas, budgets, prices). Arguments: tenant.
demo_seeded = Signal()

# Asked before rows of a model are deleted (sender: the model; ids: their primary keys). Each app
# answers {id: ["3 jobs", ...]} for what of its own still needs them: the jobs, ledger lines and
# running reservations that must never lose what they name. Answers are counted in one query per
# app and model, however many rows are asked about.
deletion_blockers = Signal()

# Asked before a tenant is placed below another (sender: the model; tenant, parent: the new parent
# or None). Each app answers a list of messages saying what the move would break of its own (a
# department's quota that its projects would outgrow), or nothing.
tenant_moving = Signal()


def blockers(model, ids) -> dict[int, list[str]]:
    """Why each of these rows may not be deleted (rows without a reason are left out)."""
    found: dict[int, list[str]] = defaultdict(list)
    ids = list(ids)
    if not ids:
        return found
    for _receiver, answer in deletion_blockers.send(sender=model, ids=ids):
        for pk, reasons in (answer or {}).items():
            found[pk] += reasons
    return found


def counted(rows, column: str, ids: list[int], label: str) -> dict[int, list[str]]:
    """{id: ["N label"]} for the rows whose `column` is one of `ids` (a helper for receivers)."""
    from django.db.models import Count

    counts = rows.filter(**{f"{column}__in": ids}).values(column).annotate(n=Count("pk"))
    return {row[column]: [f"{row['n']} {label}"] for row in counts}
