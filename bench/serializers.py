"""What ReusedFieldsMixin saves on a job submission, against DRF's own field copies, in one run.

Each submission builds a JobCreateSerializer (its fields) and renders the new job with
JobSerializer. Measured as CPU time per job (time.process_time, best of rounds), in-process,
for the mixin's shallow copies of prebuilt fields and for the same serializers with DRF's deep
copy of every declared field. Compare `saved_ms` with the server's CPU per job that
bench/submit.py prints: the mixin is worth keeping while that share is above 5%.

Usage: .venv/bin/python bench/serializers.py [--jobs 3000] [--rounds 5]. Last line: JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def plain(serializer_class):
    """The same serializer without the mixin: DRF's deep copy of every declared field."""
    return type(
        f"Plain{serializer_class.__name__}",
        (serializer_class,),
        {"get_fields": lambda self: copy.deepcopy(self._declared_fields)},
    )


def cpu_ms_per_job(create_class, show_class, job, jobs: int) -> float:
    data = {"tenant": "lab", "name": "train", "command": "true", "gpu_count": 1, "time_limit_minutes": 5}
    started = time.process_time()
    for _ in range(jobs):
        create_class(data=data).fields  # noqa: B018 - what validating builds first
        show_class(job).data  # noqa: B018
    return (time.process_time() - started) / jobs * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "factory.settings")
    os.environ.setdefault("DEBUG", "1")
    import django

    django.setup()
    from django.contrib.auth import get_user_model

    from factory.models import GpuType, Tenant
    from jobs.api.serializers import JobCreateSerializer, JobSerializer
    from jobs.models import Job

    job = Job(id=1, name="train", command="true", gpu_count=1, time_limit_minutes=5, env={"EPOCHS": "3"})
    job.tenant, job.owner = Tenant(slug="lab"), get_user_model()(username="researcher")
    job.gpu_type, job.queue_position = GpuType(slug="h100"), None
    reused, own = [], []
    for _ in range(args.rounds):
        reused.append(cpu_ms_per_job(JobCreateSerializer, JobSerializer, job, args.jobs))
        own.append(cpu_ms_per_job(plain(JobCreateSerializer), plain(JobSerializer), job, args.jobs))
    best_reused, best_own = min(reused), min(own)
    print(f"reused fields: {best_reused:.3f} ms CPU per job; DRF's deep copies: {best_own:.3f} ms")
    result = {
        "ms_per_job_reused": round(best_reused, 3),
        "ms_per_job_drf": round(best_own, 3),
        "saved_ms": round(best_own - best_reused, 3),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
