"""A job spec from a YAML file (the API's own job spec) and sbatch-like flags."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import yaml

from .client import CliError

# sbatch's --time forms: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S.
_TIME = re.compile(r"^(?:(?P<days>\d+)-)?(?P<a>\d+)(?::(?P<b>\d+))?(?::(?P<c>\d+))?$")
_MEMORY = re.compile(r"^(?P<amount>\d+(?:\.\d+)?)(?P<unit>[KMGT]?)B?$", re.IGNORECASE)
_UNIT_MB = {"": 1, "K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}


class SpecFile:
    """A YAML job spec and where each of its top-level keys is, to point errors at lines."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            text = path.read_text()
        except OSError as exc:
            raise CliError(f"cannot read {path}: {exc.strerror}", code=2) from None
        try:
            node = yaml.compose(text)
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
            problem = getattr(exc, "problem", None) or str(exc)
            raise CliError(f"{where}: not valid YAML: {problem}", code=2) from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise CliError(f"{path}: a job spec is a mapping of fields (name:, command:, ...)", code=2)
        self.data: dict[str, Any] = data
        self.lines: dict[str, int] = {}
        if isinstance(node, yaml.MappingNode):
            for key, _ in node.value:
                self.lines[str(key.value)] = key.start_mark.line + 1

    def locate(self, message: str) -> str:
        """`field: problem` → `file:line: field: problem` when the field is a key of the file."""
        field = message.split(":", 1)[0].split(".", 1)[0]
        line = self.lines.get(field)
        return f"{self.path}:{line}: {message}" if line else message


def parse_time(text: str) -> int:
    """sbatch's --time in whole minutes (seconds round up)."""
    match = _TIME.fullmatch(text.strip())
    if not match:
        raise CliError(f"--time {text!r}: use minutes, M:S, H:M:S, D-H, D-H:M or D-H:M:S", code=2)
    days = int(match["days"] or 0)
    parts = [int(p) for p in (match["a"], match["b"], match["c"]) if p is not None]
    if match["days"] is not None:
        hours, minutes, seconds = [*parts, 0, 0][:3]
    elif len(parts) == 1:
        hours, minutes, seconds = 0, parts[0], 0
    elif len(parts) == 2:
        hours, minutes, seconds = 0, parts[0], parts[1]
    else:
        hours, minutes, seconds = parts
    total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    return max(1, math.ceil(total / 60))


def parse_memory(text: str) -> int:
    """sbatch's --mem (megabytes unless K, M, G or T follows) in whole gigabytes, rounded up."""
    match = _MEMORY.fullmatch(text.strip())
    if not match:
        raise CliError(f"--mem {text!r}: use a size such as 16G or 16000M", code=2)
    megabytes = float(match["amount"]) * _UNIT_MB[match["unit"].upper()]
    return max(1, math.ceil(megabytes / 1024))


def parse_assignments(items: list[str], option: str) -> dict[str, str]:
    values = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise CliError(f"{option} {item!r}: use NAME=VALUE", code=2)
        values[name] = value
    return values


def secrets_from_environment(names: list[str], environ: dict[str, str]) -> dict[str, str]:
    """--secret NAME takes the value of the environment variable NAME: a secret never appears
    on a command line, where other users of the machine could read it."""
    secrets = {}
    for name in names:
        if name not in environ:
            raise CliError(f"--secret {name}: no environment variable {name} to take its value from", code=2)
        secrets[name] = environ[name]
    return secrets


def parse_dependency(text: str) -> dict[str, list[int]]:
    """sbatch's --dependency, for the kinds the portal keeps: `afterok:12:13,afterany:14`."""
    kinds = {"afterok": "after_ok", "afterany": "after_any"}
    found: dict[str, list[int]] = {}
    for part in text.split(","):
        kind, _, ids = part.strip().partition(":")
        if kind not in kinds or not ids:
            raise CliError(f"--dependency {part!r}: use afterok:ID[:ID…] or afterany:ID[:ID…]", code=2)
        try:
            numbers = [int(i) for i in ids.split(":")]
        except ValueError:
            raise CliError(f"--dependency {part!r}: job ids are numbers", code=2) from None
        found.setdefault(kinds[kind], []).extend(numbers)
    return found
