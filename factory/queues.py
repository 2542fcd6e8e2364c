"""The portal's Celery queues, one per purpose (importable without settings, for the scripts and
benchmarks that start workers). factory.routing puts each task on one of them."""

from __future__ import annotations

from .choices import ClusterKind

# Dispatch, cancel, sync, health and limits of one cluster: a queue per cluster kind.
BACKEND_QUEUES = {kind: f"dispatch-{kind}" for kind in ClusterKind.values}
QUEUES = [*BACKEND_QUEUES.values(), "admission", "metering", "notifications", "default"]
