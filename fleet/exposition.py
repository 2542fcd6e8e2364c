"""Reading one GPU exporter's answer (dcgm-exporter's text format) into one sample per GPU.

Label sets are parsed by prometheus_client's parser (`parse_labels`: quoting, escapes, label name
rules). A GPU's label set is the same text on each of its series, so each distinct text is parsed
once per answer; a line is otherwise `name{labels} value [timestamp]`, and only the lines of the
families read here are looked at past their name. (Handing the library whole answers re-read
every GPU's labels on each of its series: four fifths of a 1,000-node cycle went there.)

A GPU is known by its `UUID` label: MIG instances of one GPU print the same device-level series
once each, and are folded into one sample. Both the current `hostname` and the older `Hostname`
label are read; `uuid` too (dcgm-exporter's --use-old-namespace).
"""

from __future__ import annotations

import dataclasses
import math

from prometheus_client.parser import parse_labels

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


def samples(text: str) -> tuple[list[tuple[str, dict[str, str], float]], int]:
    """(name, labels, value) of each series of the families read here, and how many series the
    answer had in all. Raises ExpositionError on a line of those families that is not a sample."""
    found = []
    series = 0
    label_sets: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] == "#":
            continue
        series += 1
        brace = line.find("{")
        head = (line if brace == -1 else line[:brace]).split(None, 1)
        name = head[0] if head else ""
        if name not in WANTED:
            continue
        try:
            if brace == -1 or len(head) > 1:  # no labels
                labels, rest = {}, line[len(name) :]
            else:
                end = line.rindex("}")  # a value never holds one; a label value may
                text_labels = line[brace + 1 : end]
                labels = label_sets.get(text_labels)
                if labels is None:
                    labels = label_sets[text_labels] = parse_labels(text_labels)
                rest = line[end + 1 :]
            found.append((name, labels, _value(rest)))
        except ValueError as exc:
            raise ExpositionError(f"unreadable exposition: {exc}: {line[:200]}") from None
    return found, series


def _value(text: str) -> float:
    """The value of `value [timestamp]`, as Prometheus writes numbers (NaN, +Inf, -Inf too)."""
    parts = text.split()
    if not 1 <= len(parts) <= 2 or "_" in text:
        raise ValueError(f"not a value: {text.strip()[:50]!r}")
    if len(parts) == 2:
        int(parts[1])  # a timestamp is an integer of milliseconds
    return float(parts[0])


def parse(text: str) -> Exposition:
    """The GPUs in one exporter's answer. A malformed answer raises ExpositionError; bad values
    (NaN, negative, a series without UUID) are left out and named in `problems`."""
    found, series = samples(text)
    gpus: dict[str, GpuSample] = {}
    problems: list[str] = []
    missing_uuid = bad_values = 0
    xids: dict[str, set[int]] = {}
    jobs: dict[str, set[str]] = {}
    for name, labels, value in found:
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
        if math.isnan(value) or math.isinf(value) or value < 0:
            bad_values += 1
            continue
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
    for uuid, codes in xids.items():
        gpus[uuid].xids_in_window = frozenset(codes)
    for uuid, external_ids in jobs.items():
        gpus[uuid].hpc_jobs = frozenset(external_ids)
    if missing_uuid:
        problems.append(f"{missing_uuid} series without a UUID or gpu label")
    if bad_values:
        problems.append(f"{bad_values} NaN, infinite or negative values")
    return Exposition(gpus=gpus, problems=problems, series=series)
