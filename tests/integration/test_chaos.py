"""The chaos bench's short form: the whole stack (web server, two Celery workers, beat, a private
Redis, the local backend and the real Slurm) under killed workers and beat, a Redis that restarts
empty, a Slurm controller that restarts, and random cancels; no job lost, run twice or billed
twice, no quota oversubscribed. See bench/chaos.py for what each figure means."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from .conftest import PROJECT_DIR

if not shutil.which("sbatch"):
    if os.environ.get("FACTORY_REQUIRE_SLURM"):
        raise RuntimeError("Slurm is required (scripts/slurm-dev-cluster) but sbatch is not installed")
    pytest.skip("no Slurm here: run scripts/slurm-dev-cluster", allow_module_level=True)

pytestmark = [pytest.mark.slurm, pytest.mark.worker]


def test_nothing_is_lost_run_twice_or_billed_twice_under_faults():
    if not shutil.which("redis-server"):
        pytest.fail("redis-server is not installed (scripts/test-services installs it)")
    result = subprocess.run(
        [sys.executable, "bench/chaos.py", "--short"],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = (result.stdout + result.stderr)[-6000:]
    if result.returncode != 0:
        pytest.fail(f"bench/chaos.py --short failed:\n{output}")
    figures = json.loads(result.stdout.strip().splitlines()[-1])

    assert figures["jobs"] > 0 and figures["faults_injected"] > 0, output
    assert figures["ran_twice"] == figures["billed_twice"] == 0, output
    assert figures["quota_oversubscribed_samples"] == 0, output
    assert figures["ledger_vs_runtime_max_error_s"] <= 1, output
    assert figures["lost"] == 0 and not figures["lost_causes"], output
