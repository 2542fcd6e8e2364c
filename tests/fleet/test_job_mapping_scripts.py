"""The Slurm prolog/epilog pair that writes dcgm-exporter's job-mapping files, run as Slurm runs
them (environment variables), on a real directory."""

from __future__ import annotations

import subprocess
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def run(script: str, directory: Path, job: str, gpus: str | None = None, **more: str) -> None:
    env = {"PATH": "/usr/bin:/bin", "DCGM_JOB_MAPPING_DIR": str(directory), "SLURM_JOB_ID": job, **more}
    if gpus is not None:
        env["SLURM_JOB_GPUS"] = gpus
    subprocess.run(["bash", str(SCRIPTS / script)], env=env, check=True)


def files(directory: Path) -> dict[str, list[str]]:
    return {p.name: p.read_text().split() for p in sorted(directory.iterdir()) if not p.name.startswith(".")}


def test_prolog_maps_each_gpu_of_the_job_and_epilog_unmaps_it(tmp_path):
    run("slurm-prolog-dcgm-job-mapping", tmp_path, "101", "0,2-3")
    run("slurm-prolog-dcgm-job-mapping", tmp_path, "102", "3")
    assert files(tmp_path) == {"0": ["101"], "2": ["101"], "3": ["101", "102"]}
    run("slurm-prolog-dcgm-job-mapping", tmp_path, "101", "0,2-3")  # a rerun changes nothing
    assert files(tmp_path)["3"] == ["101", "102"]
    run("slurm-epilog-dcgm-job-mapping", tmp_path, "101")
    assert files(tmp_path) == {"3": ["102"]}
    run("slurm-epilog-dcgm-job-mapping", tmp_path, "102")
    assert files(tmp_path) == {}


def test_a_job_without_gpus_or_with_a_strange_id_maps_nothing(tmp_path):
    run("slurm-prolog-dcgm-job-mapping", tmp_path, "103")
    run("slurm-prolog-dcgm-job-mapping", tmp_path, "../etc", "0")
    assert not tmp_path.exists() or files(tmp_path) == {}


def test_a_task_of_an_array_is_mapped_by_its_array_id_and_index(tmp_path):
    task = {"SLURM_ARRAY_JOB_ID": "200", "SLURM_ARRAY_TASK_ID": "7"}
    run("slurm-prolog-dcgm-job-mapping", tmp_path, "207", "1", **task)
    assert files(tmp_path) == {"1": ["200_7"]}
    run("slurm-epilog-dcgm-job-mapping", tmp_path, "207", **task)
    assert files(tmp_path) == {}
