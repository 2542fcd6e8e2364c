"""Backend adapters, one module per cluster kind, found through a registry keyed by kind."""

from __future__ import annotations

from importlib import import_module

from .base import (
    DRAIN_REASON_PREFIX,
    Adapter,
    BackendError,
    BackendState,
    BackendUnavailable,
    DrainTarget,
    GpuLimit,
    Health,
    ImageRule,
    JobRejected,
    LogChunk,
    StatusReport,
)

ADAPTERS: dict[str, str] = {
    "local": "factory.adapters.local.LocalAdapter",
    "slurm": "factory.adapters.slurm.SlurmAdapter",
    "kubernetes": "factory.adapters.kubernetes.KubernetesAdapter",
    "ray": "factory.adapters.ray.RayAdapter",
}


def adapter_class(kind: str) -> type[Adapter]:
    try:
        dotted = ADAPTERS[kind]
    except KeyError:
        raise ValueError(f"No backend adapter for cluster kind {kind!r}.") from None
    module, name = dotted.rsplit(".", 1)
    return getattr(import_module(module), name)


def adapter_for(cluster) -> Adapter:
    return adapter_class(cluster.kind)(cluster)


__all__ = [
    "ADAPTERS",
    "DRAIN_REASON_PREFIX",
    "Adapter",
    "BackendError",
    "BackendState",
    "BackendUnavailable",
    "DrainTarget",
    "GpuLimit",
    "Health",
    "ImageRule",
    "JobRejected",
    "LogChunk",
    "StatusReport",
    "adapter_class",
    "adapter_for",
]
