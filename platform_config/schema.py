"""The platform file: GPU types, clusters with their pools and telemetry sources, tenants with
their members, quotas and budgets, user identities, rate cards and grid intensities, in YAML.

Typed with pydantic, strict: an unknown key or a value of the wrong type is an error, never
dropped or coerced ("8" is not 8). A field left out takes the portal's default, so the file says
everything about what it declares. Numbers of money and energy are decimals, written as numbers or
strings ("2.50"); dates as YYYY-MM-DD. The JSON Schema editors validate the file with is
`json_schema()`, published at /api/v1/platform/schema/ and by `manage.py platform schema`.

Secrets in cluster connection settings and in a telemetry source's Prometheus settings are
referenced, never written: `{env: NAME}` (an
environment variable of the process that plans or applies), `{file: PATH}` (a file's text, a
trailing newline dropped) or `{keep: true}` (the value the portal already holds; what `export`
writes, since the portal never shows a secret back).
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal, InvalidOperation
from functools import cache
from typing import Annotated, Any, Literal

import pydantic
from pydantic import BeforeValidator, Field, WithJsonSchema

from factory.choices import ClusterKind, Role
from fleet.choices import TelemetrySource

SLUG_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
VERSION = 1


def _decimal(value: Any) -> Decimal:
    if isinstance(value, Decimal):
        return value
    if isinstance(value, int | float | str) and not isinstance(value, bool):  # true is not a price
        try:
            number = Decimal(str(value).strip())
        except InvalidOperation:
            number = None
        if number is not None and number.is_finite():
            return number
    raise ValueError("Give a decimal number, e.g. 2.50.")


def _date(value: Any) -> date:
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise ValueError("Give a date as YYYY-MM-DD.")


Slug = Annotated[str, Field(pattern=SLUG_PATTERN, max_length=63)]
Count = Annotated[int, Field(ge=0)]
Number = Annotated[
    Decimal,
    BeforeValidator(_decimal),
    WithJsonSchema({"type": ["number", "string"], "pattern": r"^-?\d+(\.\d+)?$"}),
]
Day = Annotated[date, BeforeValidator(_date), WithJsonSchema({"type": "string", "format": "date"})]


class Spec(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", strict=True)


class SecretRef(Spec):
    """Where a secret connection setting comes from; exactly one of the three."""

    env: str | None = Field(default=None, description="An environment variable holding the secret.")
    file: str | None = Field(default=None, description="A file holding the secret.")
    keep: Literal[True] | None = Field(default=None, description="Keep the value the portal holds.")

    @pydantic.model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if sum(value is not None for value in (self.env, self.file, self.keep)) != 1:
            raise ValueError("Give exactly one of env, file or keep.")
        return self


class GpuTypeSpec(Spec):
    slug: Slug
    name: str
    memory_gb: Count = 80
    board_power_watts: Count = Field(default=700, description="Used for energy estimates.")


class PoolSpec(Spec):
    gpu_type: Slug
    capacity: Annotated[int, Field(ge=1)]
    partition: str = Field(default="", description="Slurm partition.")
    node_selector: dict[str, str] = Field(default_factory=dict, description="Kubernetes node selector.")


class TelemetrySpec(Spec):
    """Where the cluster's GPU telemetry comes from. Left out of a cluster, the portal's settings
    stay as they are; with `prune: true`, they return to these defaults."""

    source: Literal[tuple(TelemetrySource.values)] = TelemetrySource.EMBEDDED.value  # type: ignore[valid-type]
    enabled: bool = True
    interval_seconds: Annotated[float, Field(ge=1)] | None = Field(
        default=None, description="Seconds between reads; empty: the portal's FACTORY_TELEMETRY_INTERVAL."
    )
    prometheus: dict[str, Any] = Field(
        default_factory=dict,
        description="The Prometheus source's settings (url, match, node_label, TLS, timeout); its "
        "credentials (bearer_token, password) as {env: NAME}, {file: PATH} or {keep: true}, never inline.",
    )


class ClusterSpec(Spec):
    slug: Slug
    name: str
    kind: Literal[tuple(ClusterKind.values)]  # type: ignore[valid-type]
    region: str = "local"
    pue: Number = Decimal("1.20")
    enabled: bool = True
    draining: bool = False
    connection: dict[str, Any] = Field(
        default_factory=dict,
        description="The backend's connection settings (see the cluster kind); secret settings "
        "(kubeconfig, token, headers) as {env: NAME}, {file: PATH} or {keep: true}, never inline.",
    )
    pools: list[PoolSpec] = Field(default_factory=list)
    telemetry: TelemetrySpec | None = None


class MemberSpec(Spec):
    user: str = Field(description="Username of an existing portal user.")
    role: Literal[tuple(Role.values)] = Role.MEMBER.value  # type: ignore[valid-type]


class QuotaSpec(Spec):
    nominal: Count = 0
    borrowing_limit: Count | None = None
    lending_limit: Count | None = None
    max_gpus_per_job: Annotated[int, Field(ge=1)] | None = None
    max_gpus_per_user: Annotated[int, Field(ge=1)] | None = None


class BudgetSpec(Spec):
    gpu_hours_per_month: Number | None = None
    amount_per_month: Number | None = None
    currency: str = ""
    hard: bool = True
    max_priority: int = 0


class TenantSpec(Spec):
    slug: Slug
    name: str
    parent: Slug | None = None
    cost_center: str = ""
    regions: list[str] = Field(default_factory=list)
    members: list[MemberSpec] = Field(default_factory=list)
    quotas: dict[str, QuotaSpec] = Field(default_factory=dict, description="Keyed by GPU type.")
    budget: BudgetSpec | None = None


class IdentitySpec(Spec):
    user: str
    posix_username: str


class RateCardSpec(Spec):
    gpu_type: Slug
    cluster: Slug | None = None
    currency: str
    price_per_gpu_hour: Number
    price_per_cpu_core_hour: Number = Decimal(0)
    price_per_memory_gb_hour: Number = Decimal(0)
    effective_from: Day
    effective_until: Day | None = Field(default=None, description="Exclusive; empty: until further notice.")


class GridIntensitySpec(Spec):
    region: str
    grams_co2e_per_kwh: Number


class PlatformFile(Spec):
    """A platform file, or one file of a directory of them."""

    model_config = pydantic.ConfigDict(title="Platform file")

    version: Literal[1] = VERSION
    prune: bool = Field(
        default=False,
        description="Delete what the portal has and the file does not declare (never what still "
        "has jobs, ledger lines or running reservations).",
    )
    gpu_types: list[GpuTypeSpec] = Field(default_factory=list)
    clusters: list[ClusterSpec] = Field(default_factory=list)
    tenants: list[TenantSpec] = Field(default_factory=list)
    identities: list[IdentitySpec] = Field(default_factory=list)
    rate_cards: list[RateCardSpec] = Field(default_factory=list)
    grid_intensities: list[GridIntensitySpec] = Field(default_factory=list)


@cache
def json_schema() -> dict:
    """The file's JSON Schema (draft 2020-12), each cluster kind's connection settings and the
    Prometheus source's settings included, their secret settings as references."""
    from fleet.sources.prometheus import PrometheusSettings

    schema = PlatformFile.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$defs"]["SecretRef"] = SecretRef.model_json_schema()
    schema["$defs"]["ClusterSpec"]["allOf"] = [
        {
            "if": {"properties": {"kind": {"const": kind}}, "required": ["kind"]},
            "then": {"properties": {"connection": _connection_schema(kind, schema["$defs"])}},
        }
        for kind in ClusterKind.values
    ]
    telemetry = schema["$defs"]["TelemetrySpec"]["properties"]
    telemetry["prometheus"] = {
        **_settings_schema(PrometheusSettings, schema["$defs"]),
        "description": telemetry["prometheus"]["description"],
    }
    return schema


def _connection_schema(kind: str, defs: dict) -> dict:
    from factory.adapters import adapter_class

    return _settings_schema(adapter_class(kind).connection_class, defs)


def _settings_schema(settings: type[pydantic.BaseModel], defs: dict) -> dict:
    schema = settings.model_json_schema(ref_template="#/$defs/{model}")
    defs.update(schema.pop("$defs", {}))
    for name, info in settings.model_fields.items():
        if info.repr is False:  # a secret: referenced, never written
            schema["properties"][name] = {"$ref": "#/$defs/SecretRef"}
    return schema
