"""Platform-as-code benchmark: a platform file of 1,000 tenants (10 departments of 99 teams and
their members), 4 GPU types, 3 clusters with their pools, a quota of every GPU type per tenant and
a budget each, planned and applied on PostgreSQL.

Measures the plan and the apply of the file against an empty portal (everything is created), then
the plan and the apply of the same file again (nothing changes), and the SQL queries of that
unchanged apply, which do not grow with the number of tenants (tests/platform_config/
test_queries.py compares two sizes).

Usage: .venv/bin/python bench/platform.py [--tenants 1000]
Needs a local PostgreSQL (trust auth); creates and drops its own database. Last line: JSON.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import sysconfig
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


def _hand_over_to_the_standard_library() -> None:
    """This file's name is the standard library's `platform`, and bench/ heads the import path of
    every script in it: when one of them imports `platform` (uuid and Celery do), it gets the real
    module, not this file."""
    spec = importlib.util.spec_from_file_location(
        "platform", Path(sysconfig.get_path("stdlib")) / "platform.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["platform"] = module
    spec.loader.exec_module(module)


if __name__ == "platform":
    _hand_over_to_the_standard_library()


def use_project_imports() -> None:
    """Run as a script: bench/ leaves the import path (this file would shadow the standard
    library's `platform` for everything the benchmark imports) and the project root joins it."""
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH]
    sys.path.insert(0, str(ROOT))


DB_NAME = "factory_bench_platform"
GPU_TYPES = ("h100", "h200", "a100", "l40s")
USERS = 200


def setup_django() -> None:
    from bench.support import benchdb

    os.environ.update(
        DJANGO_SETTINGS_MODULE="factory.settings",
        DATABASE_URL=benchdb.url(DB_NAME),
        SECRET_KEY="bench-only-not-a-secret-" + "x" * 40,
        CELERY_TASK_ALWAYS_EAGER="0",
        REDIS_URL="redis://127.0.0.1:6379/13",
        LOG_LEVEL="WARNING",
    )
    os.environ.pop("DEBUG", None)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def platform_file(tenants: int) -> str:
    lines = ["gpu_types:"]
    lines += [f"- {{slug: {g}, name: {g.upper()}, memory_gb: 80, board_power_watts: 700}}" for g in GPU_TYPES]
    lines.append("clusters:")
    for i, kind in enumerate(("slurm", "local", "slurm")):
        lines.append(
            f"- slug: cluster-{i}\n  name: Cluster {i}\n  kind: {kind}\n  region: region-{i}\n  pools:"
        )
        lines += [f"  - {{gpu_type: {g}, capacity: 512, partition: gpu}}" for g in GPU_TYPES]
    lines.append("tenants:")
    departments = 10
    for d in range(departments):
        # A department's nominal bounds the sum of its teams' (99 teams of at most 7 GPUs each).
        quotas = ", ".join(f"{g}: {{nominal: 700}}" for g in GPU_TYPES)
        lines.append(f"- {{slug: dept-{d}, name: Department {d}, cost_center: CC-{d}, quotas: {{{quotas}}}}}")
    for t in range(tenants - departments):
        quotas = ", ".join(
            f"{g}: {{nominal: {4 + t % 4}, borrowing_limit: 8, max_gpus_per_job: 8}}" for g in GPU_TYPES
        )
        lines.append(
            f"- slug: team-{t}\n  name: Team {t}\n  parent: dept-{t % departments}\n"
            f"  members: [{{user: user-{t % USERS}, role: admin}}, {{user: user-{(t + 1) % USERS}}}]\n"
            f"  quotas: {{{quotas}}}\n"
            f"  budget: {{gpu_hours_per_month: {1000 + t}, amount_per_month: '2500.00', currency: EUR}}"
        )
    return "\n".join(lines) + "\n"


CPU: dict[str, float] = {}


def timed(action, name: str = ""):
    """The result and the wall-clock seconds; this process's CPU seconds go to CPU[name] (the wall
    clock also counts PostgreSQL's work, and waiting for a CPU on a busy machine)."""
    started, cpu = time.perf_counter(), time.process_time()
    result = action()
    if name:
        CPU[name] = round(time.process_time() - cpu, 3)
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=1000)
    args = parser.parse_args()
    use_project_imports()
    from bench.support import benchdb

    benchdb.recreate(DB_NAME)
    try:
        setup_django()
        from django.contrib.auth import get_user_model
        from django.db import connection
        from django.test.utils import CaptureQueriesContext

        from platform_config import applying, loading, planning

        get_user_model().objects.bulk_create(get_user_model()(username=f"user-{i}") for i in range(USERS))
        text = platform_file(args.tenants)

        def plan():
            return planning.make_plan(loading.from_texts([("", text)]))

        def apply():
            return applying.apply(loading.from_texts([("", text)]), source="bench")

        fresh_plan, plan_s_fresh = timed(plan, "plan_cpu_s_fresh")
        (applied, change_set), apply_s_fresh = timed(apply, "apply_cpu_s_fresh")
        assert change_set is not None and applied.summary() == fresh_plan.summary()
        unchanged, plan_s_unchanged = timed(plan, "plan_cpu_s_unchanged")
        assert not unchanged.has_changes
        with CaptureQueriesContext(connection) as queries:
            (again, change_set), apply_s_unchanged = timed(apply, "apply_cpu_s_unchanged")
        assert change_set is None and not again.has_changes
        figures = {
            "tenants": args.tenants,
            "gpu_types": len(GPU_TYPES),
            "clusters": 3,
            "file_bytes": len(text.encode()),
            "objects_created": fresh_plan.summary()["create"],
            "plan_s_fresh": round(plan_s_fresh, 3),
            "apply_s_fresh": round(apply_s_fresh, 3),
            "plan_s_unchanged": round(plan_s_unchanged, 3),
            "apply_s_unchanged": round(apply_s_unchanged, 3),
            "apply_queries_unchanged": len(queries.captured_queries),
            **CPU,
            "load_average_1m": round(os.getloadavg()[0], 2),
        }
    finally:
        from django.db import connections

        connections.close_all()
        benchdb.drop(DB_NAME)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
