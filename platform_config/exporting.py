"""Today's state as a platform file, so a site starts from what it has: planning the export
against the portal it came from shows no changes. Values equal to the file's defaults are left out;
secrets are written `{keep: true}`, since the portal never shows one back."""

from __future__ import annotations

from collections import defaultdict
from datetime import date
from decimal import Decimal

import pydantic
import yaml

from fleet.sources.prometheus import PrometheusSettings

from . import state as st
from .planning import secret_settings
from .schema import (
    VERSION,
    BudgetSpec,
    ClusterSpec,
    GpuTypeSpec,
    GridIntensitySpec,
    MemberSpec,
    PoolSpec,
    QuotaSpec,
    RateCardSpec,
    TelemetrySpec,
    TenantSpec,
)

HEADER = "# The platform as code: plan with `manage.py platform plan FILE`, apply with `platform apply`.\n"


def _without_defaults(spec: type[pydantic.BaseModel], values: dict) -> dict:
    out = {}
    for name, value in values.items():
        info = spec.model_fields.get(name)
        if info is not None and not info.is_required():
            default = info.get_default(call_default_factory=True)
            if value == default and type(value) is type(default):
                continue
        out[name] = value
    return out


def document(state: st.State) -> dict:
    pools = defaultdict(list)
    for (cluster, gpu_type), fields in sorted(state["pool"].items()):
        pools[cluster].append(_without_defaults(PoolSpec, {"gpu_type": gpu_type, **fields}))
    members, quotas = defaultdict(list), defaultdict(dict)
    for (tenant, user), fields in sorted(state["membership"].items()):
        members[tenant].append(_without_defaults(MemberSpec, {"user": user, **fields}))
    for (tenant, gpu_type), fields in sorted(state["quota"].items()):
        quotas[tenant][gpu_type] = _without_defaults(QuotaSpec, fields)

    clusters = []
    for (slug,), fields in sorted(state["cluster"].items()):
        connection = dict(fields["connection"] or {})
        for name in secret_settings(fields["kind"]) & set(connection):
            connection[name] = {"keep": True}
        entry = _without_defaults(ClusterSpec, {"slug": slug, **fields, "connection": connection})
        if pools[slug]:
            entry["pools"] = pools[slug]
        telemetry = _telemetry(state["telemetry"].get((slug,)))
        if telemetry:
            entry["telemetry"] = telemetry
        clusters.append(entry)

    tenants = []
    for (slug,), fields in sorted(state["tenant"].items()):
        entry = _without_defaults(TenantSpec, {"slug": slug, **fields})
        if members[slug]:
            entry["members"] = members[slug]
        if quotas[slug]:
            entry["quotas"] = quotas[slug]
        budget = state["budget"].get((slug,))
        if budget is not None:
            entry["budget"] = _without_defaults(BudgetSpec, budget)
        tenants.append(entry)

    rate_cards = []
    for (gpu_type, cluster, start), fields in sorted(state["rate_card"].items()):
        values = {"gpu_type": gpu_type, "cluster": cluster or None, **fields}
        values["effective_from"] = date.fromisoformat(start)
        rate_cards.append(_without_defaults(RateCardSpec, values))

    sections = {
        "version": VERSION,
        "gpu_types": [
            _without_defaults(GpuTypeSpec, {"slug": slug, **f})
            for (slug,), f in sorted(state["gpu_type"].items())
        ],
        "clusters": clusters,
        "tenants": tenants,
        "identities": [
            {"user": user, "posix_username": f["posix_username"]}
            for (user,), f in sorted(state["identity"].items())
        ],
        "rate_cards": rate_cards,
        "grid_intensities": [
            _without_defaults(GridIntensitySpec, {"region": region, **f})
            for (region,), f in sorted(state["grid_intensity"].items())
        ],
    }
    return {name: value for name, value in sections.items() if value != []}


def _telemetry(fields: dict | None) -> dict:
    """A cluster's telemetry source, left out where it is the default."""
    if fields is None or fields == st.telemetry_defaults():
        return {}
    prometheus = dict(fields["prometheus"] or {})
    for name in PrometheusSettings.secret_names() & set(prometheus):
        prometheus[name] = {"keep": True}
    return _without_defaults(TelemetrySpec, {**fields, "prometheus": prometheus})


class _Dumper(yaml.SafeDumper):
    pass


def _decimal(dumper: yaml.SafeDumper, value: Decimal) -> yaml.Node:
    # As a string: exact, whatever a YAML reader does with floats.
    return dumper.represent_str(
        format(value.normalize(), "f") if value == value.to_integral() else str(value)
    )


_Dumper.add_representer(Decimal, _decimal)


def export_text(state: st.State | None = None) -> str:
    data = document(state or st.current())
    return HEADER + yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=110)
