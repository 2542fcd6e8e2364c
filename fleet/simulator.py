"""A GPU exporter simulator: `python -m fleet.simulator --port 9400 --node NAME:TYPE:COUNT[:SLOTS] ...`

There are no GPUs on the machines this portal is developed and tested on, and no way to make one
appear, so no real dcgm-exporter can run here. This server stands in for it: it speaks the text
format of NVIDIA's dcgm-exporter exactly (the metric names of its default counter set, its label
set `gpu`, `UUID`, `pci_bus_id`, `device`, `modelName`, `Hostname`/`hostname`,
`DCGM_FI_DRIVER_VERSION`, its `# HELP`/`# TYPE` lines, `DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION` as a
counter of mJ since boot), plus the two health counters sites usually enable
(`DCGM_FI_DEV_ECC_DBE_VOL_TOTAL`, `DCGM_EXP_XID_ERRORS_COUNT`). Everything it reports is made up.

For the local backend it reads the backend's GPU slot table: a simulated GPU held by a job is busy
(high utilisation, power near its board limit), the others idle. Each node is served at
`/nodes/<name>/metrics`, and the first also at `/metrics`.

Faults, for tests and demos (`POST /faults` with JSON `{"node": ..., "gpu": 3, "fault": ...}`,
`DELETE /faults` clears them all):
- `xid79` (or `xid<N>`): the GPU reports XID N (last-value gauge and windowed count);
- `hot`: its temperature rises by 4 °C per scrape;
- `row_remap_failure`, `ecc_dbe`: a failed row remap, an uncorrectable ECC error;
- `counter_reset`: its energy counter starts again from 0 (a driver reload);
- node faults: `stop` (the connection is closed unanswered), `hang` (no answer for 60 s),
  `error` (HTTP 500), `malformed` (a line cut off inside its label set), `no_uuid` (series without `UUID`),
  `nan` (NaN and negative values), `old_labels` (`Hostname` instead of `hostname`), `mig` (each
  GPU printed once per MIG instance with the same device-level counters).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

DRIVER_VERSION = "550.127.05"
XID_WINDOW_MS = "300000"
MODEL_NAMES = {
    "h100": "NVIDIA H100 80GB HBM3",
    "h200": "NVIDIA H200",
    "a100": "NVIDIA A100-SXM4-80GB",
    "l40s": "NVIDIA L40S",
}
BOARD_WATTS = {"h100": 700, "h200": 700, "a100": 400, "l40s": 350}

# (name, type, help) in dcgm-exporter's order (etc/default-counters.csv), then the two health
# counters the simulator also serves.
COUNTERS = [
    ("DCGM_FI_DEV_SM_CLOCK", "gauge", "SM clock frequency (in MHz)."),
    ("DCGM_FI_DEV_MEM_CLOCK", "gauge", "Memory clock frequency (in MHz)."),
    ("DCGM_FI_DEV_MEMORY_TEMP", "gauge", "Memory temperature (in C)."),
    ("DCGM_FI_DEV_GPU_TEMP", "gauge", "GPU temperature (in C)."),
    ("DCGM_FI_DEV_POWER_USAGE", "gauge", "Power draw (in W)."),
    ("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "counter", "Total energy consumption since boot (in mJ)."),
    ("DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "counter", "Total number of PCIe retries."),
    ("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilization (in %)."),
    ("DCGM_FI_DEV_MEM_COPY_UTIL", "gauge", "Memory utilization (in %)."),
    ("DCGM_FI_DEV_ENC_UTIL", "gauge", "Encoder utilization (in %)."),
    ("DCGM_FI_DEV_DEC_UTIL", "gauge", "Decoder utilization (in %)."),
    ("DCGM_FI_DEV_XID_ERRORS", "gauge", "Value of the last XID error encountered."),
    ("DCGM_FI_DEV_FB_FREE", "gauge", "Frame buffer memory free (in MB)."),
    ("DCGM_FI_DEV_FB_USED", "gauge", "Frame buffer memory used (in MB)."),
    ("DCGM_FI_DEV_FB_RESERVED", "gauge", "Frame buffer memory reserved (in MB)."),
    ("DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL", "counter", "Total number of NVLink bandwidth counters for all lanes."),
    ("DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", "counter", "Number of remapped rows for uncorrectable errors"),
    ("DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", "counter", "Number of remapped rows for correctable errors"),
    ("DCGM_FI_DEV_ROW_REMAP_FAILURE", "gauge", "Whether remapping of rows has failed"),
    ("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "gauge", "Ratio of time the graphics engine is active."),
    ("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", "gauge", "Ratio of cycles the tensor (HMMA) pipe is active."),
    ("DCGM_FI_PROF_DRAM_ACTIVE", "gauge", "Ratio of cycles the device memory interface is active sending or receiving data."),
    ("DCGM_FI_PROF_PCIE_TX_BYTES", "gauge", "The rate of data transmitted over the PCIe bus - including both protocol headers and data payloads - in bytes per second."),
    ("DCGM_FI_PROF_PCIE_RX_BYTES", "gauge", "The rate of data received over the PCIe bus - including both protocol headers and data payloads - in bytes per second."),
    ("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "counter", "Total number of double-bit volatile ECC errors."),
    ("DCGM_EXP_XID_ERRORS_COUNT", "gauge", "Count of XID Errors within user-specified time window (see xid-count-window-size flag)."),
]  # fmt: skip

NODE_FAULTS = {"stop", "hang", "error", "malformed", "no_uuid", "nan", "old_labels", "mig"}
GPU_FAULTS = {"hot", "row_remap_failure", "ecc_dbe", "counter_reset"}


def gpu_uuid(node: str, index: int) -> str:
    digest = hashlib.sha1(f"{node}/{index}".encode()).hexdigest()
    return f"GPU-{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"


def rotating_job(epoch: int, jobs_per_epoch: int, slot: int) -> str:
    """The Slurm job id of job `slot` (in node and GPU order) in wall-clock epoch `epoch`: the jobs
    of epoch e run from e × job_seconds to (e + 1) × job_seconds."""
    return str(1 + epoch * jobs_per_epoch + slot)


@dataclass
class SimGpu:
    index: int
    uuid: str
    gpu_type: str
    temperature: float = 34.0
    energy_mj: float = 0.0
    power: float = 60.0
    utilisation: float = 0.0
    xid: int = 0
    xid_at: float = 0.0
    hot: bool = False
    row_remap_failure: bool = False
    dbe: int = 0

    @property
    def model_name(self) -> str:
        return MODEL_NAMES.get(self.gpu_type, f"NVIDIA {self.gpu_type.upper()}")

    @property
    def memory_total(self) -> int:
        return 81559

    def advance(self, busy: bool, seconds: float, rng: random.Random) -> None:
        board = BOARD_WATTS.get(self.gpu_type, 500)
        self.utilisation = rng.uniform(88, 100) if busy else 0.0
        self.power = board * rng.uniform(0.78, 0.9) if busy else board * 0.09 + rng.uniform(-2, 2)
        self.energy_mj += self.power * seconds * 1000
        if self.hot:
            self.temperature += 4.0
        else:
            target = 72.0 if busy else 34.0
            self.temperature += (target - self.temperature) * min(1.0, seconds / 30) + rng.uniform(-0.5, 0.5)


@dataclass
class SimNode:
    name: str
    gpus: list[SimGpu]
    slots_file: Path | None = None
    faults: set[str] = field(default_factory=set)
    hpc_jobs: dict[int, str] = field(default_factory=dict)  # GPU index → Slurm job id (hpc_job label)
    pods: dict[int, tuple[str, str]] = field(default_factory=dict)  # GPU index → (namespace, pod)

    def busy_slots(self) -> set[int]:
        if self.slots_file is None:
            return set(self.hpc_jobs) | set(self.pods)
        try:
            return {int(slot) for slot in json.loads(self.slots_file.read_text())}
        except (OSError, ValueError):
            return set()


class Simulator:
    """`collect_seconds`: like dcgm-exporter (DCGM_EXPORTER_INTERVAL, 30 s by default), a node's
    answer is collected at most this often and served as collected in between."""

    def __init__(self, nodes: list[SimNode], *, seed: int = 0, collect_seconds: float = 0.0) -> None:
        self.nodes = {node.name: node for node in nodes}
        self.first = nodes[0].name if nodes else ""
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.clock = time.monotonic()
        self.collect_seconds = collect_seconds
        self.collected: dict[str, tuple[float, str]] = {}
        self.clocks: dict[str, float] = {}
        self.rotation: tuple[int, int, float] | None = None  # gpus per node, per job, job seconds
        self.job_epochs: tuple[int, int] | None = None  # the first epoch with jobs, how many
        self.epoch: int | None = None

    @classmethod
    def uniform(
        cls,
        count: int,
        gpus: int,
        gpu_type: str = "h100",
        prefix: str = "gpu-node",
        *,
        gpus_per_job: int = 0,
        job_seconds: float = 0.0,
        job_epochs: tuple[int, int] | None = None,
        **kw,
    ) -> Simulator:
        """`count` nodes of `gpus` GPUs; with `gpus_per_job`, every GPU runs a Slurm job (the
        `hpc_job` label), jobs numbered from 1 in node order. With `job_seconds` too, the jobs
        end and the next ones start every `job_seconds` of wall-clock time (see rotating_job),
        in the `job_epochs` (first, count) only, if given: the GPUs are idle before and after."""
        width = len(str(count))
        names = [f"{prefix}-{i:0{width}d}" for i in range(1, count + 1)]
        nodes = [SimNode(n, [SimGpu(i, gpu_uuid(n, i), gpu_type) for i in range(gpus)]) for n in names]
        if gpus_per_job:
            for number, node in enumerate(nodes):
                node.hpc_jobs = {i: str(1 + (number * gpus + i) // gpus_per_job) for i in range(gpus)}
        simulator = cls(nodes, **kw)
        if gpus_per_job and job_seconds:
            simulator.rotation = (gpus, gpus_per_job, job_seconds)
            simulator.job_epochs = job_epochs
        return simulator

    def advance(self, name: str | None = None) -> None:
        """Run the simulated GPUs (one node, or all) up to now."""
        now = time.monotonic()
        with self.lock:
            for node in [self.nodes[name]] if name else self.nodes.values():
                seconds = now - self.clocks.get(node.name, self.clock)
                self.clocks[node.name] = now
                busy = node.busy_slots()
                for gpu in node.gpus:
                    gpu.advance(gpu.index in busy, seconds, self.rng)

    def inject(self, node_name: str, fault: str, gpu_index: int | None = None) -> None:
        with self.lock:
            node = self.nodes[node_name]
            if fault in NODE_FAULTS:
                node.faults.add(fault)
                return
            gpu = node.gpus[gpu_index or 0]
            if fault.startswith("xid") and fault[3:].isdigit():
                gpu.xid, gpu.xid_at = int(fault[3:]), time.monotonic()
            elif fault == "hot":
                gpu.hot = True
            elif fault == "row_remap_failure":
                gpu.row_remap_failure = True
            elif fault == "ecc_dbe":
                gpu.dbe += 1
            elif fault == "counter_reset":
                gpu.energy_mj = 0.0
            else:
                raise KeyError(fault)

    def clear(self) -> None:
        with self.lock:
            for node in self.nodes.values():
                node.faults.clear()
                for gpu in node.gpus:
                    gpu.hot = gpu.row_remap_failure = False
                    gpu.xid_at, gpu.dbe = 0.0, 0  # the last-value XID gauge stays, as on a real GPU
                    gpu.temperature = min(gpu.temperature, 40.0)

    def rotate_jobs(self) -> None:
        """Under `rotation`, every GPU's job of this wall-clock epoch (see rotating_job)."""
        if self.rotation is None:
            return
        gpus, per_job, seconds = self.rotation
        epoch = int(time.time() // seconds)
        if epoch == self.epoch:
            return
        idle = self.job_epochs is not None and not (
            self.job_epochs[0] <= epoch < self.job_epochs[0] + self.job_epochs[1]
        )
        with self.lock:
            jobs = gpus * len(self.nodes) // per_job
            for number, node in enumerate(self.nodes.values()):
                node.hpc_jobs = {
                    i: rotating_job(epoch, jobs, (number * gpus + i) // per_job)
                    for i in range(gpus)
                    if not idle
                }
            self.epoch = epoch
            self.collected.clear()

    def render(self, node_name: str) -> str:
        self.rotate_jobs()
        now = time.monotonic()
        at, text = self.collected.get(node_name, (0.0, ""))
        if not text or now - at >= self.collect_seconds or self.nodes[node_name].faults:
            self.advance(node_name)
            with self.lock:
                text = render_node(self.nodes[node_name])
            self.collected[node_name] = (now, text)
        return text

    def collect_all(self) -> None:
        for name in self.nodes:
            self.render(name)


def _labels(node: SimNode, gpu: SimGpu, instance: int | None) -> str:
    parts = [
        f'gpu="{gpu.index}"',
        f'UUID="{gpu.uuid}"',
        f'pci_bus_id="00000000:{0x18 + gpu.index * 0x10:02X}:00.0"',
        f'device="nvidia{gpu.index}"',
        f'modelName="{gpu.model_name}"',
    ]
    if "no_uuid" in node.faults:
        parts.pop(1)
    if instance is not None:
        parts += ['GPU_I_PROFILE="3g.40gb"', f'GPU_I_ID="{instance}"']
    parts.append(f'{"Hostname" if "old_labels" in node.faults else "hostname"}="{node.name}"')
    parts.append(f'DCGM_FI_DRIVER_VERSION="{DRIVER_VERSION}"')
    if gpu.index in node.hpc_jobs:
        parts.append(f'hpc_job="{node.hpc_jobs[gpu.index]}"')
    if gpu.index in node.pods:  # as with --kubernetes, from the kubelet's pod-resources socket
        namespace, pod = node.pods[gpu.index]
        parts += [f'pod="{pod}"', f'namespace="{namespace}"', 'container="job"']
    return "{" + ",".join(parts) + "}"


def _values(node: SimNode, gpu: SimGpu) -> dict[str, float | int]:
    used = int(gpu.memory_total * 0.7) if gpu.utilisation else 0
    busy = gpu.utilisation / 100
    values: dict[str, float | int] = {
        "DCGM_FI_DEV_SM_CLOCK": 1980 if busy else 345,
        "DCGM_FI_DEV_MEM_CLOCK": 2619,
        "DCGM_FI_DEV_MEMORY_TEMP": round(gpu.temperature + 3, 0),
        "DCGM_FI_DEV_GPU_TEMP": round(gpu.temperature, 0),
        "DCGM_FI_DEV_POWER_USAGE": round(gpu.power, 6),
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": int(gpu.energy_mj),
        "DCGM_FI_DEV_PCIE_REPLAY_COUNTER": 0,
        "DCGM_FI_DEV_GPU_UTIL": round(gpu.utilisation),
        "DCGM_FI_DEV_MEM_COPY_UTIL": round(gpu.utilisation * 0.4),
        "DCGM_FI_DEV_ENC_UTIL": 0,
        "DCGM_FI_DEV_DEC_UTIL": 0,
        "DCGM_FI_DEV_XID_ERRORS": gpu.xid,
        "DCGM_FI_DEV_FB_FREE": gpu.memory_total - used,
        "DCGM_FI_DEV_FB_USED": used,
        "DCGM_FI_DEV_FB_RESERVED": 545,
        "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL": 0,
        "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS": 1 if gpu.row_remap_failure else 0,
        "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS": 0,
        "DCGM_FI_DEV_ROW_REMAP_FAILURE": 1 if gpu.row_remap_failure else 0,
        "DCGM_FI_PROF_GR_ENGINE_ACTIVE": round(busy * 0.95, 6),
        "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": round(busy * 0.6, 6),
        "DCGM_FI_PROF_DRAM_ACTIVE": round(busy * 0.5, 6),
        "DCGM_FI_PROF_PCIE_TX_BYTES": int(busy * 2.1e9),
        "DCGM_FI_PROF_PCIE_RX_BYTES": int(busy * 3.4e9),
        "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL": gpu.dbe,
    }
    if "nan" in node.faults:
        values["DCGM_FI_DEV_POWER_USAGE"] = float("nan")
        values["DCGM_FI_DEV_GPU_TEMP"] = -5
    return values


def render_node(node: SimNode) -> str:
    instances: list[int | None] = [1, 2] if "mig" in node.faults else [None]
    lines = []
    window = time.monotonic() - int(XID_WINDOW_MS) / 1000
    # Each GPU's labels and values once, not once per counter: a bench serves a thousand nodes.
    labelled = {(gpu.index, i): _labels(node, gpu, i) for gpu in node.gpus for i in instances}
    values = {gpu.index: _values(node, gpu) for gpu in node.gpus}
    for name, kind, text in COUNTERS:
        lines.append(f"# HELP {name} {text}")
        lines.append(f"# TYPE {name} {kind}")
        for gpu in node.gpus:
            for instance in instances:
                labels = labelled[gpu.index, instance]
                if name == "DCGM_EXP_XID_ERRORS_COUNT":
                    if gpu.xid and gpu.xid_at > window:
                        extra = f',window_size_in_ms="{XID_WINDOW_MS}",xid="{gpu.xid}"'
                        lines.append(f"{name}{labels[:-1]}{extra}}} 1")
                    continue
                value = values[gpu.index][name]
                lines.append(f"{name}{labels} {_number(value)}")
    text = "\n".join(lines) + "\n"
    if "malformed" in node.faults:
        # Cut off inside a label set, as a crashed exporter or a broken proxy leaves it.
        cut = text.index("DCGM_FI_DEV_POWER_USAGE{") + 40
        text = text[:cut] + "\n" + text[cut:].split("\n", 1)[1]
    return text


def _number(value: float | int) -> str:
    if isinstance(value, float):
        return "NaN" if value != value else f"{value:.6f}"
    return str(value)


class Handler(BaseHTTPRequestHandler):
    simulator: Simulator
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # As Go's net/http (dcgm-exporter's server) does: without it, the body written after the
        # headers waits for the client's delayed ACK, 40 ms a scrape.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format, *args) -> None:  # one line per scrape would drown the demo's log
        pass

    def _node_name(self) -> str | None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            return self.simulator.first
        parts = path.strip("/").split("/")
        if len(parts) == 3 and parts[0] == "nodes" and parts[2] == "metrics":
            return parts[1]
        return None

    def do_GET(self) -> None:
        name = self._node_name()
        if name not in self.simulator.nodes:
            self._send(404, "not found\n")
            return
        faults = self.simulator.nodes[name].faults
        if "stop" in faults:
            self.close_connection = True
            self.connection.close()
            return
        if "hang" in faults:
            time.sleep(60)
            return
        if "error" in faults:
            self._send(500, "error collecting metrics\n")
            return
        self._send(200, self.simulator.render(name), "text/plain; version=0.0.4; charset=utf-8")

    def do_POST(self) -> None:
        if self.path != "/faults":
            self._send(404, "not found\n")
            return
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            self.simulator.inject(body["node"], body["fault"], body.get("gpu"))
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            self._send(400, f"bad fault: {exc}\n")
            return
        self._send(204, "")

    def do_DELETE(self) -> None:
        self.simulator.clear()
        self._send(204, "")

    def _send(self, status: int, text: str, content_type: str = "text/plain; charset=utf-8") -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)


def serve(simulator: Simulator, host: str = "127.0.0.1", port: int = 9400) -> ThreadingHTTPServer:
    handler = type("BoundHandler", (Handler,), {"simulator": simulator})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def parse_node(spec: str) -> SimNode:
    """NAME:TYPE:COUNT[:SLOTS_FILE]: a node of COUNT GPUs of TYPE, busy as the slot table says."""
    name, gpu_type, count, *rest = spec.split(":", 3)
    gpus = [SimGpu(i, gpu_uuid(name, i), gpu_type) for i in range(int(count))]
    return SimNode(name, gpus, Path(rest[0]) if rest else None)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve simulated GPUs in dcgm-exporter's format.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9400)
    parser.add_argument("--node", action="append", default=[], help="NAME:TYPE:COUNT[:SLOTS_FILE]")
    parser.add_argument("--nodes", type=int, default=0, help="this many uniform nodes instead")
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--gpus-per-job", type=int, default=0, help="label every GPU with a Slurm job")
    parser.add_argument("--job-seconds", type=float, default=0.0, help="with --gpus-per-job: jobs this long")
    parser.add_argument("--job-epochs", help="FIRST:COUNT: jobs only in these epochs of --job-seconds")
    parser.add_argument("--collect-seconds", type=float, default=0.0, help="as DCGM_EXPORTER_INTERVAL")
    args = parser.parse_args(argv)
    if args.nodes:
        simulator = Simulator.uniform(
            args.nodes,
            args.gpus,
            gpus_per_job=args.gpus_per_job,
            job_seconds=args.job_seconds,
            job_epochs=tuple(int(n) for n in args.job_epochs.split(":")) if args.job_epochs else None,
            collect_seconds=args.collect_seconds,
        )
    else:
        simulator = Simulator([parse_node(n) for n in args.node], collect_seconds=args.collect_seconds)
    if args.collect_seconds:
        simulator.collect_all()
    server = serve(simulator, args.host, args.port)
    print(
        f"GPU exporter simulator: {len(simulator.nodes)} node(s) on http://{args.host}:{args.port}",
        flush=True,
    )
    server.serve_forever()


if __name__ == "__main__":
    main()
