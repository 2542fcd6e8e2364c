"""Connection settings: one typed schema per cluster kind (pydantic models), checked when a cluster
is saved and again whenever an adapter is made for it.

Apart from base.py so that what imports the protocol (every web and worker process) does not load
pydantic: the adapter modules, imported on first use, do.
"""

from __future__ import annotations

from typing import Any, Self

import pydantic


class Connection(pydantic.BaseModel):
    """A cluster kind's connection settings. Subclasses declare typed fields with their defaults;
    rules beyond a field's type are validators raising ValueError with a message naming the
    setting. Strict: a value of the wrong type is refused, never coerced ("30" is not 30)."""

    model_config = pydantic.ConfigDict(strict=True, extra="forbid", frozen=True)

    @classmethod
    def parse(cls, data: Any) -> Self:
        if not isinstance(data, dict):
            raise ValueError("Connection settings must be an object.")
        try:
            return cls.model_validate(data)
        except pydantic.ValidationError as exc:
            raise ValueError(_first_problem(exc)) from None


def _first_problem(exc: pydantic.ValidationError) -> str:
    """One message, about unknown settings first, then a missing or mistyped one, then a value
    a rule refuses. Settings may hold credentials: the message names a setting, never its value."""
    errors = exc.errors()
    unknown = sorted(str(error["loc"][0]) for error in errors if error["type"] == "extra_forbidden")
    if unknown:
        return f"Unknown connection setting(s): {', '.join(unknown)}."
    for error in errors:
        if error["type"] == "missing":
            return f"Connection setting {error['loc'][0]!r} is required."
        if error["type"] != "value_error":
            return f"Connection setting {error['loc'][0]!r} has the wrong type."
    return str(errors[0]["ctx"]["error"])
