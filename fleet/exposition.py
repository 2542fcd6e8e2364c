"""Reading one GPU exporter's answer (dcgm-exporter's text format) into one sample per GPU.

The text is parsed by prometheus_client's parser; this module only picks the series it needs and
checks their values. A GPU is known by its `UUID` label: MIG instances of one GPU print the same
device-level series once each, and are folded into one sample. Both the current `hostname` and the
older `Hostname` label are read; `uuid` too (dcgm-exporter's --use-old-namespace).
"""

from __future__ import annotations

import dataclasses
import math

from prometheus_client.parser import text_string_to_metric_families

GAUGES = {
    "DCGM_FI_DEV_GPU_TEMP": "temperature_c",
    "DCGM_FI_DEV_POWER_USAGE": "power_w",
    "DCGM_FI_DEV_GPU_UTIL": "utilisation_pct",
    "DCGM_FI_DEV_FB_USED": "memory_used_mib",
}
ENERGY = "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"
XID_LAST = "DCGM_FI_DEV_XID_ERRORS"
XID_COUNT = "DCGM_EXP_XID_ERRORS_COUNT"
ROW_REMAP_FAILURE = "DCGM_FI_DEV_ROW_REMAP_FAILURE"
ECC_DBE = ("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "DCGM_FI_DEV_ECC_DBE_AGG_TOTAL")
WANTED = {*GAUGES, ENERGY, XID_LAST, XID_COUNT, ROW_REMAP_FAILURE, *ECC_DBE}


class ExpositionError(ValueError):
    """The answer is not the exposition format: nothing of it is used."""


@dataclasses.dataclass
class GpuSample:
    uuid: str
    index: int
    model_name: str = ""
    hostname: str = ""
    temperature_c: float | None = None
    power_w: float | None = None
    utilisation_pct: float | None = None
    memory_used_mib: float | None = None
    energy_mj: int | None = None
    xid_last: int = 0
    xids_in_window: frozenset[int] = frozenset()
    row_remap_failure: bool = False
    uncorrectable_ecc: int = 0
    hpc_jobs: frozenset[str] = frozenset()
    pod: str = ""
    namespace: str = ""


@dataclasses.dataclass
class Exposition:
    gpus: dict[str, GpuSample]
    problems: list[str]
    series: int


def wanted_lines(text: str) -> tuple[str, int]:
    """Only the families read here, with their HELP/TYPE lines: the parser's time grows with the
    lines it reads, and the default counter set is two thirds series nobody here reads. A line is
    kept or dropped whole, by its metric name; the parser still reads every kept line."""
    kept = []
    series = 0
    for line in text.splitlines():
        if line.startswith("#"):
            parts = line.split(None, 3)
            name = parts[2] if len(parts) > 2 else ""
        elif line.strip():
            series += 1
            name = line.split("{", 1)[0].split(None, 1)[0]
        else:
            continue
        if name in WANTED:
            kept.append(line)
    return "\n".join(kept) + "\n", series


def parse(text: str) -> Exposition:
    """The GPUs in one exporter's answer. A malformed answer raises ExpositionError; bad values
    (NaN, negative, a series without UUID) are left out and named in `problems`."""
    wanted, series = wanted_lines(text)
    try:
        families = list(text_string_to_metric_families(wanted))
    except (ValueError, IndexError, TypeError) as exc:
        raise ExpositionError(f"unreadable exposition: {exc}") from None
    gpus: dict[str, GpuSample] = {}
    problems: list[str] = []
    missing_uuid = bad_values = 0
    xids: dict[str, set[int]] = {}
    jobs: dict[str, set[str]] = {}
    for family in families:
        if family.name not in WANTED:
            continue
        for sample in family.samples:
            labels = sample.labels
            uuid = labels.get("UUID") or labels.get("uuid")
            if not uuid:
                missing_uuid += 1
                continue
            gpu = gpus.get(uuid)
            if gpu is None:
                try:
                    index = int(labels.get("gpu", ""))
                except ValueError:
                    missing_uuid += 1
                    continue
                gpu = gpus[uuid] = GpuSample(
                    uuid=uuid,
                    index=index,
                    model_name=labels.get("modelName", ""),
                    hostname=labels.get("hostname") or labels.get("Hostname", ""),
                    pod=labels.get("pod") or labels.get("pod_name", ""),
                    namespace=labels.get("namespace") or labels.get("pod_namespace", ""),
                )
            if "hpc_job" in labels:
                jobs.setdefault(uuid, set()).add(labels["hpc_job"])
            value = sample.value
            if value is None or math.isnan(value) or math.isinf(value) or value < 0:
                bad_values += 1
                continue
            name = family.name
            if name in GAUGES:
                setattr(gpu, GAUGES[name], float(value))
            elif name == ENERGY:
                gpu.energy_mj = int(value)
            elif name == XID_LAST:
                gpu.xid_last = int(value)
            elif name == XID_COUNT:
                if value > 0 and labels.get("xid", "").isdigit():
                    xids.setdefault(uuid, set()).add(int(labels["xid"]))
            elif name == ROW_REMAP_FAILURE:
                gpu.row_remap_failure = gpu.row_remap_failure or value >= 1
            elif name in ECC_DBE:
                gpu.uncorrectable_ecc = max(gpu.uncorrectable_ecc, int(value))
    for uuid, found in xids.items():
        gpus[uuid].xids_in_window = frozenset(found)
    for uuid, found in jobs.items():
        gpus[uuid].hpc_jobs = frozenset(found)
    if missing_uuid:
        problems.append(f"{missing_uuid} series without a UUID or gpu label")
    if bad_values:
        problems.append(f"{bad_values} NaN, infinite or negative values")
    return Exposition(gpus=gpus, problems=problems, series=series)
