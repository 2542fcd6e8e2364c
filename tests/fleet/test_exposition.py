"""Reading dcgm-exporter's text: labels old and new, MIG folded by UUID, bad values left out."""

from __future__ import annotations

import pytest

from fleet.exposition import ExpositionError, parse
from fleet.simulator import SimGpu, SimNode, gpu_uuid, render_node


def node(*faults: str, gpus: int = 2) -> SimNode:
    sim = SimNode("gpu-node-1", [SimGpu(i, gpu_uuid("gpu-node-1", i), "h100") for i in range(gpus)])
    sim.faults.update(faults)
    for gpu in sim.gpus:
        gpu.energy_mj, gpu.power, gpu.temperature, gpu.utilisation = 5_000_000 + gpu.index, 350.5, 61, 97
    return sim


def test_every_gpu_is_read_by_uuid_with_its_figures():
    exposition = parse(render_node(node()))
    assert len(exposition.gpus) == 2 and not exposition.problems
    gpu = exposition.gpus[gpu_uuid("gpu-node-1", 1)]
    assert (gpu.index, gpu.hostname, gpu.model_name) == (1, "gpu-node-1", "NVIDIA H100 80GB HBM3")
    assert (gpu.energy_mj, gpu.power_w, gpu.temperature_c, gpu.utilisation_pct) == (
        5_000_001,
        350.5,
        61.0,
        97.0,
    )
    assert exposition.series > 2 * 24  # the whole default counter set was there


def test_old_hostname_label_is_read_too():
    exposition = parse(render_node(node("old_labels")))
    assert 'Hostname="gpu-node-1"' in render_node(node("old_labels"))
    assert {g.hostname for g in exposition.gpus.values()} == {"gpu-node-1"}


def test_mig_instances_of_one_gpu_count_once():
    text = render_node(node("mig"))
    assert text.count('GPU_I_ID="2"') > 0
    exposition = parse(text)
    assert len(exposition.gpus) == 2
    assert exposition.gpus[gpu_uuid("gpu-node-1", 0)].energy_mj == 5_000_000


def test_series_without_uuid_are_left_out_and_said():
    exposition = parse(render_node(node("no_uuid")))
    assert exposition.gpus == {}
    assert "without a UUID" in exposition.problems[0]


def test_nan_and_negative_values_are_left_out_and_said():
    exposition = parse(render_node(node("nan")))
    gpu = exposition.gpus[gpu_uuid("gpu-node-1", 0)]
    assert gpu.power_w is None and gpu.temperature_c is None and gpu.energy_mj == 5_000_000
    assert any("NaN" in p for p in exposition.problems)


def test_malformed_exposition_is_refused_whole():
    with pytest.raises(ExpositionError):
        parse(render_node(node("malformed")))


def test_xid_from_windowed_count_and_hpc_job_label():
    sim = node()
    sim.gpus[1].xid, sim.gpus[1].xid_at = 79, 1e12
    sim.hpc_jobs = {1: "4242"}
    gpu = parse(render_node(sim)).gpus[gpu_uuid("gpu-node-1", 1)]
    assert gpu.xid_last == 79 and gpu.xids_in_window == {79} and gpu.hpc_jobs == {"4242"}


def test_label_values_with_braces_quotes_and_escapes_and_timestamps_are_read():
    labels = 'gpu="0",UUID="GPU-a",modelName="odd } name, \\"quoted\\"\\\\"'
    text = (
        "# HELP DCGM_FI_DEV_GPU_TEMP GPU temperature (in C).\n"
        "# TYPE DCGM_FI_DEV_GPU_TEMP gauge\n"
        f"DCGM_FI_DEV_GPU_TEMP{{{labels}}} 61 1700000000000\n"
        f"DCGM_FI_DEV_POWER_USAGE{{{labels}}} +Inf\n"
        f"DCGM_FI_DEV_GPU_UTIL{{{labels},}} 97\n"
        "DCGM_FI_DEV_SM_CLOCK this line is not read: not a family used here\n"
    )
    exposition = parse(text)
    gpu = exposition.gpus["GPU-a"]
    assert gpu.model_name == 'odd } name, "quoted"\\'
    assert (gpu.temperature_c, gpu.utilisation_pct, gpu.power_w) == (61.0, 97.0, None)
    assert exposition.series == 4 and exposition.problems == ["1 NaN, infinite or negative values"]


@pytest.mark.parametrize(
    "line",
    [
        'DCGM_FI_DEV_GPU_TEMP{gpu="0",UUID="GPU-a"} sixty',
        'DCGM_FI_DEV_GPU_TEMP{gpu="0",UUID="GPU-a"} 61 62 63',
        'DCGM_FI_DEV_GPU_TEMP{gpu="0",UUID="GPU-a} 61',
        'DCGM_FI_DEV_GPU_TEMP{gpu="0" UUID="GPU-a"} 61',
        'DCGM_FI_DEV_GPU_TEMP{gpu="0",UUID="GPU-a"} 6_1',
    ],
)
def test_a_malformed_line_of_a_family_read_refuses_the_whole_answer(line):
    with pytest.raises(ExpositionError):
        parse(render_node(node()) + line + "\n")
