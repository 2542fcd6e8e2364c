"""The platform's state as plain values, one shape for what the portal holds and what a file
declares: per kind of object, its natural key (slugs, usernames; never database ids) → its fields.

The portal's state is read in a fixed number of queries, whatever the number of tenants.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth import get_user_model

from billing.models import GridIntensity, RateCard
from factory.models import Cluster, GpuType, Identity, Membership, Pool, Tenant
from fleet.models import ClusterTelemetry
from quotas.models import Budget, Quota

Key = tuple[str, ...]

# Kinds in the order they are created (a kind only refers to kinds before it); deleted in reverse.
FIELDS: dict[str, tuple[str, ...]] = {
    "gpu_type": ("name", "memory_gb", "board_power_watts"),
    "cluster": ("name", "kind", "region", "pue", "enabled", "draining", "connection"),
    "telemetry": ("source", "enabled", "interval_seconds", "prometheus"),
    "pool": ("capacity", "partition", "node_selector"),
    "tenant": ("name", "parent", "cost_center", "regions"),
    "membership": ("role",),
    "identity": ("posix_username",),
    "quota": Quota.AUDITED,
    "budget": Budget.AUDITED,
    "rate_card": (
        "currency",
        "price_per_gpu_hour",
        "price_per_cpu_core_hour",
        "price_per_memory_gb_hour",
        "effective_until",
    ),
    "grid_intensity": ("grams_co2e_per_kwh",),
}
KINDS = tuple(FIELDS)
# Key parts: gpu_type (slug), cluster (slug), telemetry (cluster), pool (cluster, gpu type), tenant (slug),
# membership (tenant, username), identity (username), quota (tenant, gpu type), budget (tenant),
# rate_card (gpu type, cluster or "", effective from), grid_intensity (region).
NO_CLUSTER = ""


def key_text(key: Key) -> str:
    return "/".join(part or "*" for part in key)


@dataclass
class State:
    objects: dict[str, dict[Key, dict[str, Any]]] = field(default_factory=lambda: {k: {} for k in KINDS})
    # Database ids of what exists, by kind and key (the portal's state only).
    ids: dict[str, dict[Key, int]] = field(default_factory=lambda: {k: {} for k in KINDS})

    def __getitem__(self, kind: str) -> dict[Key, dict[str, Any]]:
        return self.objects[kind]


def _values(queryset, key_fields: tuple[str, ...], kind: str, state: State, renames=None) -> None:
    renames = renames or {}
    names = [renames.get(name, name) for name in FIELDS[kind]]
    for row in queryset.values("id", *key_fields, *names):
        key = tuple("" if row[k] is None else str(row[k]) for k in key_fields)
        state.objects[kind][key] = {name: row[renames.get(name, name)] for name in FIELDS[kind]}
        state.ids[kind][key] = row["id"]


def current() -> State:
    """What the portal holds now: eleven queries."""
    state = State()
    _values(GpuType.objects.all(), ("slug",), "gpu_type", state)
    _values(Cluster.objects.all(), ("slug",), "cluster", state)
    _telemetry(state)
    _values(Pool.objects.all(), ("cluster__slug", "gpu_type__slug"), "pool", state)
    _values(Tenant.objects.all(), ("slug",), "tenant", state, {"parent": "parent__slug"})
    _values(Membership.objects.all(), ("tenant__slug", "user__username"), "membership", state)
    _values(Identity.objects.exclude(posix_username=""), ("user__username",), "identity", state)
    _values(Quota.objects.all(), ("tenant__slug", "gpu_type__slug"), "quota", state)
    _values(Budget.objects.all(), ("tenant__slug",), "budget", state)
    _values(RateCard.objects.all(), ("gpu_type__slug", "cluster__slug", "effective_from"), "rate_card", state)
    _values(GridIntensity.objects.all(), ("region",), "grid_intensity", state)
    for fields in state["tenant"].values():
        fields["regions"] = list(fields["regions"] or [])
    return state


def telemetry_defaults() -> dict[str, Any]:
    from .schema import TelemetrySpec

    return TelemetrySpec().model_dump()


def _telemetry(state: State) -> None:
    """Every cluster's telemetry source, its credentials among its Prometheus settings (so that a
    rotated one is seen); the defaults for a cluster without a row of its own, which is made on
    first use with those (ClusterTelemetry.of)."""
    for key in state["cluster"]:
        state.objects["telemetry"][key] = telemetry_defaults()
    for telemetry in ClusterTelemetry.objects.select_related("cluster").only(
        "cluster__slug", "prometheus_secrets_sealed", *FIELDS["telemetry"]
    ):
        key = (telemetry.cluster.slug,)
        state.objects["telemetry"][key] = {
            "source": telemetry.source,
            "enabled": telemetry.enabled,
            "interval_seconds": telemetry.interval_seconds,
            "prometheus": {**(telemetry.prometheus or {}), **telemetry.prometheus_secrets()},
        }
        state.ids["telemetry"][key] = telemetry.pk


def user_ids(usernames: set[str]) -> dict[str, int]:
    users = get_user_model().objects.filter(username__in=usernames)
    return dict(users.values_list("username", "id"))
