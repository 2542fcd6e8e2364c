"""Arrays and sweeps: one submission of many tasks.

`array: "0-999%50"` makes a task per index (Slurm's grammar: "1,3,5-7", "0-15:4", and after "%" how
many tasks may run at once); `sweep: [{LR: "0.1"}, {LR: "0.01"}]` makes a task per parameter set,
indexed from 0, each set added to the task's environment (with `array: "%4"` for a limit). Every
task is a job of its own with FACTORY_ARRAY_INDEX set; see submission.submit_array.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

from django.conf import settings
from django.core.exceptions import ValidationError

from factory.adapters.base import BadIndexes, expand_indexes, index_ranges, split_limit

from .validators import validate_env

SCALARS = (str, int, float, bool)


@dataclasses.dataclass(frozen=True)
class ArrayRequest:
    """What an `array:` or `sweep:` field asked for, checked."""

    indexes: tuple[int, ...]
    max_running: int | None = None
    sweep: tuple[dict[str, str], ...] | None = None

    @property
    def size(self) -> int:
        return len(self.indexes)

    @property
    def ranges(self) -> str:
        return index_ranges(self.indexes)

    @property
    def text(self) -> str:
        """The `array:` field as it would be written again: "0-999%50", or "%4" for a sweep."""
        limit = f"%{self.max_running}" if self.max_running else ""
        return limit if self.sweep is not None else self.ranges + limit

    def env_of(self, position: int, base: dict[str, str]) -> dict[str, str]:
        """The environment of the task at `position` (0-based, in index order)."""
        if self.sweep is None:
            return base
        return {**base, **self.sweep[position]}

    def as_spec(self) -> dict:
        """As the API's fields: for telling requests apart and for templates."""
        spec: dict = {"array": self.text} if self.text else {}
        if self.sweep is not None:
            spec["sweep"] = [dict(values) for values in self.sweep]
        return spec


def parse(
    array: str | None, sweep, env: dict | None = None, maximum: int | None = None
) -> ArrayRequest | None:
    """The array or sweep a request asked for (None: a single job). Raises ValidationError with a
    message on `array` or `sweep` for one that cannot be: malformed, empty, over the maximum
    (FACTORY_MAX_ARRAY_TASKS), an index named twice, parameters that are no environment."""
    maximum = settings.FACTORY_MAX_ARRAY_TASKS if maximum is None else maximum
    array = (array or "").strip()
    if sweep in (None, []) and not array:
        return None
    try:
        listed, limit = split_limit(array)
    except BadIndexes as exc:
        raise ValidationError({"array": f"{exc}: write e.g. 0-99%10."}) from None
    if limit is not None and limit < 1:
        raise ValidationError({"array": "At least one task must be able to run at once: %1 or more."})
    if sweep not in (None, []):
        if listed:
            raise ValidationError(
                {
                    "array": "With a sweep, its parameter sets are the tasks: array may only limit how many "
                    "run at once, as %4."
                }
            )
        sets = parse_sweep(sweep, env or {}, maximum)
        return ArrayRequest(tuple(range(len(sets))), limit, sets)
    if not listed:
        raise ValidationError({"array": "Name the tasks' indexes, e.g. 0-99, or 0-99%10 for 10 at once."})
    try:
        indexes = expand_indexes(listed, limit=maximum)
    except BadIndexes as exc:
        message = str(exc)
        if message.startswith("more than"):
            message = f"An array may have at most {maximum:,} tasks (FACTORY_MAX_ARRAY_TASKS)."
        else:
            message = f"{message[:1].upper()}{message[1:]}: write e.g. 0-99, 1,3,5-7 or 0-99:2."
        raise ValidationError({"array": message}) from None
    twice = sorted(index for index, count in Counter(indexes).items() if count > 1)
    if twice:
        raise ValidationError({"array": f"Index {twice[0]} is named twice."})
    return ArrayRequest(tuple(sorted(indexes)), limit)


def parse_sweep(sweep, env: dict, maximum: int) -> tuple[dict[str, str], ...]:
    """A sweep's parameter sets as environment variables (numbers and booleans written as text),
    each checked with the job's own environment as the task will have it."""
    if not isinstance(sweep, list | tuple):
        raise ValidationError({"sweep": "Give a list of parameter sets, e.g. [{LR: 0.1}, {LR: 0.01}]."})
    if len(sweep) > maximum:
        raise ValidationError(
            {"sweep": f"A sweep may have at most {maximum:,} sets (FACTORY_MAX_ARRAY_TASKS)."}
        )
    sets = []
    for number, values in enumerate(sweep):
        if not isinstance(values, dict):
            raise ValidationError({"sweep": f"Set {number}: give NAME: value pairs."})
        params = {}
        for name, value in values.items():
            if not isinstance(value, SCALARS):
                raise ValidationError(
                    {"sweep": f"Set {number}: the value of {name} must be a number or text."}
                )
            params[name] = str(value).lower() if isinstance(value, bool) else str(value)
        try:
            validate_env({**env, **params})
        except ValidationError as exc:
            raise ValidationError({"sweep": f"Set {number}: {exc.messages[0]}"}) from None
        sets.append(params)
    return tuple(sets)


def sweep_lines(text: str) -> list[dict[str, str]]:
    """The form's sweep: one parameter set per line, as NAME=value pairs separated by spaces
    (quoted as in a shell where a value holds one)."""
    import shlex

    sets = []
    for number, line in enumerate((text or "").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            words = shlex.split(line)
        except ValueError as exc:
            raise ValidationError(f"Line {number}: {exc}.") from None
        values = {}
        for word in words:
            name, sep, value = word.partition("=")
            if not sep or not name:
                raise ValidationError(f"Line {number}: write NAME=value pairs, e.g. LR=0.1 BATCH=32.")
            values[name] = value
        sets.append(values)
    return sets


def sweep_text(sets) -> str:
    import shlex

    return "\n".join(
        " ".join(f"{name}={shlex.quote(value)}" for name, value in values.items()) for values in sets or []
    )
