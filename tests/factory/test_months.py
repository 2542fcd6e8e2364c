from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from factory.months import days_in, month_begins, month_of, next_month, parse_month


def test_a_month_is_its_first_day_and_begins_at_midnight_utc():
    assert month_of(datetime(2026, 11, 30, 23, 59, tzinfo=UTC)) == date(2026, 11, 1)
    assert month_of(date(2026, 2, 14)) == date(2026, 2, 1)
    assert month_begins(date(2026, 11, 1)) == datetime(2026, 11, 1, tzinfo=UTC)


def test_december_is_followed_by_january_of_the_next_year():
    assert next_month(date(2026, 12, 1)) == date(2027, 1, 1)
    assert next_month(date(2026, 1, 1)) == date(2026, 2, 1)


@pytest.mark.parametrize(
    ("month", "days"), [(date(2028, 2, 1), 29), (date(2026, 2, 1), 28), (date(2026, 12, 1), 31)]
)
def test_days_in_a_month(month, days):
    assert days_in(month) == days


def test_a_month_is_given_as_year_dash_month_or_defaults_to_this_one():
    assert parse_month("2026-11") == date(2026, 11, 1)
    assert parse_month("") == month_of()
    for wrong in ("2026-13", "2026-1", "nov"):
        with pytest.raises(ValueError, match="YYYY-MM"):
            parse_month(wrong)


def test_the_first_day_of_a_month_is_the_deprecated_way_to_name_it():
    assert parse_month("2026-11-01") == date(2026, 11, 1)
    for wrong in ("2026-11-02", "2026-11-1", "2026-13-01"):
        with pytest.raises(ValueError, match="YYYY-MM"):
            parse_month(wrong)
