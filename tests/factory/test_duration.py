from __future__ import annotations

from datetime import timedelta

import pytest

from factory.templatetags.factory_tags import duration


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0 s"), (45, "45 s"), (185, "3 min 05 s"), (7620, "2 h 07 min"), (3 * 86400 + 4 * 3600, "3 d 4 h")],
)
def test_duration_reads_like_a_person_would_say_it(seconds, text):
    assert duration(timedelta(seconds=seconds)) == text


def test_no_duration_is_blank():
    assert duration(None) == ""
