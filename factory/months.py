"""Calendar months, the unit budgets, reservations and the ledger are kept by. A month is the date
of its first day; it begins at midnight UTC."""

from __future__ import annotations

import calendar
import re
from datetime import UTC, date, datetime

from django.utils import timezone

MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")


def month_of(moment: datetime | date | None = None) -> date:
    """The month a moment or day falls in; this month without one."""
    moment = moment or timezone.now()
    return date(moment.year, moment.month, 1)


def next_month(month: date) -> date:
    return date(month.year + (month.month == 12), month.month % 12 + 1, 1)


def month_begins(month: date) -> datetime:
    return datetime.combine(month, datetime.min.time(), tzinfo=UTC)


def days_in(month: date) -> int:
    return calendar.monthrange(month.year, month.month)[1]


def parse_month(value: str | None) -> date:
    """'YYYY-MM' → the first of that month (empty: this month); ValueError with a message otherwise."""
    if not value:
        return month_of()
    match = MONTH.match(value)
    if not match:
        raise ValueError("Give the month as YYYY-MM, e.g. 2026-11.")
    return date(int(match[1]), int(match[2]), 1)
