"""Calendar months, the unit budgets, reservations and the ledger are kept by. A month is the date
of its first day; it begins at midnight UTC."""

from __future__ import annotations

import calendar
import re
from datetime import UTC, date, datetime

from django.utils import timezone

MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")
# The month's first day, as the usage API once took it: still accepted, for one release.
DEPRECATED_MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])-01$")
MONTH_HELP = (
    "A month, YYYY-MM (e.g. 2026-11). Deprecated: YYYY-MM-01, the month's first day, is still "
    "accepted in this release and refused in the next."
)
# The OpenAPI schema of a month parameter: both forms, the old one marked deprecated.
MONTH_SCHEMA = {
    "type": "string",
    "pattern": r"^\d{4}-(0[1-9]|1[0-2])(-01)?$",
    "example": "2026-11",
    "x-deprecated-forms": ["YYYY-MM-01"],
}


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
    """'YYYY-MM' → the first of that month (empty: this month); ValueError with a message otherwise.
    The deprecated 'YYYY-MM-01' means the same month."""
    if not value:
        return month_of()
    match = MONTH.match(value) or DEPRECATED_MONTH.match(value)
    if not match:
        raise ValueError("Give the month as YYYY-MM, e.g. 2026-11.")
    return date(int(match[1]), int(match[2]), 1)
