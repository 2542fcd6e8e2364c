"""Health rules, kept as data: what the portal's defaults are, and a site's overrides of them
(FACTORY_GPU_HEALTH_RULES, a JSON object replacing keys of DEFAULT_RULES).

XID classes follow NVIDIA's guidance: application errors (13, 31, 43, 45, 68) leave the GPU
healthy; 63, 92 and 94 are watched (warning); the rest listed under "drain_xids" take the GPU
out of service.
"""

from __future__ import annotations

import dataclasses
import json
from functools import cache

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from .choices import Health
from .exposition import GpuSample

DEFAULT_RULES: dict[str, object] = {
    "drain_xids": [46, 48, 64, 74, 79, 95, 119, 120, 140, 143],
    "watch_xids": [63, 92, 94],
    "row_remap_failure": "failed",
    "uncorrectable_ecc": "failed",
    "temperature_limit_c": 87,
    "temperature_samples": 3,  # consecutive samples over the limit before the GPU fails
    "exporter_silent_seconds": 60,
    "resume_after_seconds": 600,  # healthy this long before the portal resumes what it drained
    "idle_utilisation_pct": 5,
    "idle_minutes": 30,
}

XID_TEXT = {
    46: "GPU stopped processing",
    48: "double-bit ECC error",
    63: "row remapping recorded",
    64: "row remapping failed",
    74: "NVLink error",
    79: "GPU has fallen off the bus",
    92: "high single-bit ECC error rate",
    94: "contained ECC error",
    95: "uncontained ECC error",
    119: "GSP RPC timeout",
    120: "GSP error",
    140: "unrecovered ECC error",
    143: "GPU initialisation failure",
}


@dataclasses.dataclass(frozen=True)
class Rules:
    drain_xids: frozenset[int]
    watch_xids: frozenset[int]
    row_remap_failure: str
    uncorrectable_ecc: str
    temperature_limit_c: float
    temperature_samples: int
    exporter_silent_seconds: float
    resume_after_seconds: float
    idle_utilisation_pct: float
    idle_minutes: float


def build_rules(overrides: dict) -> Rules:
    unknown = set(overrides) - set(DEFAULT_RULES)
    if unknown:
        raise ImproperlyConfigured(f"FACTORY_GPU_HEALTH_RULES has unknown keys: {', '.join(sorted(unknown))}")
    data = {**DEFAULT_RULES, **overrides}
    for key in ("row_remap_failure", "uncorrectable_ecc"):
        if data[key] not in (Health.WARNING, Health.FAILED):
            raise ImproperlyConfigured(f"FACTORY_GPU_HEALTH_RULES: {key} must be 'warning' or 'failed'")
    try:
        return Rules(
            drain_xids=frozenset(int(x) for x in data["drain_xids"]),
            watch_xids=frozenset(int(x) for x in data["watch_xids"]),
            row_remap_failure=str(data["row_remap_failure"]),
            uncorrectable_ecc=str(data["uncorrectable_ecc"]),
            temperature_limit_c=float(data["temperature_limit_c"]),
            temperature_samples=max(1, int(data["temperature_samples"])),
            exporter_silent_seconds=float(data["exporter_silent_seconds"]),
            resume_after_seconds=float(data["resume_after_seconds"]),
            idle_utilisation_pct=float(data["idle_utilisation_pct"]),
            idle_minutes=float(data["idle_minutes"]),
        )
    except (TypeError, ValueError) as exc:
        raise ImproperlyConfigured(f"FACTORY_GPU_HEALTH_RULES: {exc}") from None


@cache
def _site_rules(text: str) -> Rules:
    try:
        overrides = json.loads(text) if text else {}
    except json.JSONDecodeError as exc:
        raise ImproperlyConfigured(f"FACTORY_GPU_HEALTH_RULES is not JSON: {exc}") from None
    if not isinstance(overrides, dict):
        raise ImproperlyConfigured("FACTORY_GPU_HEALTH_RULES must be a JSON object")
    return build_rules(overrides)


def site_rules() -> Rules:
    return _site_rules(settings.FACTORY_GPU_HEALTH_RULES)


@dataclasses.dataclass(frozen=True)
class Verdict:
    health: str
    reason: str
    hot_samples: int


def judge(sample: GpuSample, *, hot_samples: int, last_xid: int, rules: Rules) -> Verdict:
    """What one sample says of its GPU, given how many samples before it were too hot and the
    last XID already seen (dcgm-exporter's XID gauge keeps its last value: only a new value, or
    one in the windowed count, is news)."""
    where = f"GPU {sample.index}"
    found: list[tuple[str, str]] = []
    xids = set(sample.xids_in_window)
    if sample.xid_last and sample.xid_last != last_xid:
        xids.add(sample.xid_last)
    for xid in sorted(xids):
        text = XID_TEXT.get(xid, "")
        said = f"XID {xid}{f' ({text})' if text else ''} on {where}"
        if xid in rules.drain_xids:
            found.append((Health.FAILED, said))
        elif xid in rules.watch_xids:
            found.append((Health.WARNING, said))
    if sample.row_remap_failure:
        found.append((rules.row_remap_failure, f"row-remap failure on {where}"))
    if sample.uncorrectable_ecc:
        found.append(
            (rules.uncorrectable_ecc, f"{sample.uncorrectable_ecc} uncorrectable ECC error(s) on {where}")
        )
    hot = hot_samples + 1 if (sample.temperature_c or 0) > rules.temperature_limit_c else 0
    if hot:
        said = (
            f"{where} at {sample.temperature_c:.0f} °C, over {rules.temperature_limit_c:.0f} °C "
            f"for {hot} sample(s)"
        )
        found.append((Health.FAILED if hot >= rules.temperature_samples else Health.WARNING, said))
    if not found:
        return Verdict(Health.HEALTHY, "", hot)
    worst = Health.FAILED if any(h == Health.FAILED for h, _ in found) else Health.WARNING
    return Verdict(worst, "; ".join(text for h, text in found if h == worst), hot)
