"""CPU time from /proc: per process (with the children it reaped) and for the whole machine."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass(frozen=True)
class Process:
    pid: int
    ppid: int
    pgid: int
    name: str
    cpu_seconds: float  # utime + stime, plus cutime + cstime of the children it reaped


def processes() -> list[Process]:
    """Every process now. Exited processes count in their parent's reaped-children time (a
    PostgreSQL backend per connection in the postmaster's)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        used = sum(int(f) for f in fields[11:15]) / CLOCK_TICKS
        found.append(Process(int(entry.name), int(fields[1]), int(fields[2]), name, used))
    return found


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (everything but idle and iowait)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(values) - values[3] - values[4]) / CLOCK_TICKS
