"""A plan: what applying a declaration would create, change and delete, field by field, and what
blocks a deletion. Planning changes nothing.

The desired state is the file's objects, plus, without `prune: true`, whatever the portal has that
the file does not mention (left as it is). It is checked as a whole before anything is compared:
references that lead nowhere, a loop of tenants, projects' quotas above their department's, rate
cards overlapping in time, the models' own rules, secrets written inline. Every problem is listed
with its path.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pydantic
import yaml
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError

from billing.models import GridIntensity, RateCard
from factory.adapters import adapter_class
from factory.hierarchy import TenantTree
from factory.models import Cluster, GpuType, Identity, Membership, Pool, Tenant
from factory.signals import blockers
from fleet.models import ClusterTelemetry
from fleet.sources.prometheus import PrometheusSettings
from quotas import nesting
from quotas.models import Budget, Quota

from . import state as st
from .loading import Declaration, Invalid, Problem
from .schema import SecretRef
from .state import NO_CLUSTER, Key, State

SECRET_SHOWN = "(secret)"


@dataclass
class Change:
    action: str  # create | change | delete
    kind: str
    key: Key
    fields: list[tuple[str, Any, Any]] = field(default_factory=list)  # (name, old, new); secrets masked
    blocked_by: list[str] = field(default_factory=list)

    def as_json(self) -> dict:
        return {
            "action": self.action,
            "kind": self.kind,
            "key": st.key_text(self.key),
            "fields": [
                {"field": n, "old": json_value(old), "new": json_value(new)} for n, old, new in self.fields
            ],
            "blocked_by": self.blocked_by,
        }


@dataclass
class Plan:
    changes: list[Change]
    desired: State
    current: State
    prune: bool
    users: dict[str, int]

    @property
    def has_changes(self) -> bool:
        return bool(self.changes)

    @property
    def blocked(self) -> list[Change]:
        return [c for c in self.changes if c.blocked_by]

    def summary(self) -> dict[str, int]:
        counts = {"create": 0, "change": 0, "delete": 0}
        for change in self.changes:
            counts[change.action] += 1
        return counts

    @property
    def digest(self) -> str:
        """What the plan would do, in 12 hex digits: `apply --expect-plan` refuses any other plan."""
        text = json.dumps([c.as_json() for c in self.changes], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def as_json(self) -> dict:
        return {
            "has_changes": self.has_changes,
            "digest": self.digest,
            "summary": self.summary(),
            "changes": [c.as_json() for c in self.changes],
        }

    def render(self) -> str:
        lines = []
        marks = {"create": "+", "change": "~", "delete": "-"}
        for change in self.changes:
            lines.append(f"{marks[change.action]} {change.kind} {st.key_text(change.key)}")
            for name, old, new in change.fields:
                if change.action == "create":
                    lines.append(f"    {name}: {_shown(new)}")
                elif change.action == "change":
                    lines.append(f"    {name}: {_shown(old)} → {_shown(new)}")
            for reason in change.blocked_by:
                lines.append(f"    blocked: {reason}")
        counts = self.summary()
        if not self.changes:
            lines.append("No changes: the portal matches the file.")
        else:
            lines.append(
                f"Plan: {counts['create']} to create, {counts['change']} to change, "
                f"{counts['delete']} to delete (plan {self.digest})."
            )
        if self.blocked:
            lines.append(f"{len(self.blocked)} deletion(s) blocked: apply would refuse this plan.")
        return "\n".join(lines)


def json_value(value):
    """A value as JSON holds it (decimals and dates as text)."""
    if value is None or isinstance(value, bool | int | str | list | dict):
        return value
    return str(value)


def _shown(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and value != SECRET_SHOWN:
        return repr(value)
    return str(json_value(value))


def make_plan(declaration: Declaration, read_secrets: bool = True) -> Plan:
    """The plan of a declaration against what the portal holds now, or Invalid. Without
    `read_secrets` (a plan asked for over HTTP: the web server's environment and files are not the
    caller's to read), secrets referenced by {env} or {file} count as unchanged where the portal
    holds one, and as set where it does not."""
    current = st.current()
    declared, origins, problems = declared_state(declaration, current, read_secrets)
    usernames = {key[1] for key in declared["membership"]} | {key[0] for key in declared["identity"]}
    users = st.user_ids(usernames)
    desired = _desired(declared, current, declaration.prune)
    problems += check(desired, declared, origins, users, current)
    if problems:
        raise Invalid(problems)
    changes = diff(current, desired)
    _add_blockers(changes, current)
    return Plan(changes=changes, desired=desired, current=current, prune=declaration.prune, users=users)


def _desired(declared: State, current: State, prune: bool) -> State:
    if prune:
        return declared
    desired = State()
    for kind in st.KINDS:
        desired.objects[kind] = {**current[kind], **declared[kind]}
    return desired


# --- the file as a state --------------------------------------------------------------------------


def declared_state(declaration: Declaration, current: State, read_secrets: bool = True):
    """The declared objects by kind and key, where each came from, and the problems found on the
    way (duplicates, secrets)."""
    declared = State()
    origins: dict[tuple[str, Key], str] = {}
    problems: list[Problem] = []

    def put(kind: str, key: Key, fields: dict, path: str) -> None:
        if (kind, key) in origins:
            problems.append(
                Problem(
                    path,
                    f"{kind.replace('_', ' ')} {st.key_text(key)} is already declared at "
                    f"{origins[kind, key]}.",
                )
            )
            return
        declared[kind][key] = fields
        origins[kind, key] = path

    items = declaration.items
    for path, spec in items["gpu_types"]:
        put("gpu_type", (spec.slug,), spec.model_dump(exclude={"slug"}), path)
    for path, spec in items["clusters"]:
        fields = spec.model_dump(exclude={"slug", "pools", "telemetry"})
        stored = (current["cluster"].get((spec.slug,)) or {}).get("connection") or {}
        fields["connection"] = _resolve_secrets(
            spec.connection, secret_settings(spec.kind), stored, f"{path}.connection", problems, read_secrets
        )
        put("cluster", (spec.slug,), fields, path)
        telemetry = _declared_telemetry(
            spec, declaration.prune, current, f"{path}.telemetry", problems, read_secrets
        )
        if telemetry is not None:
            put("telemetry", (spec.slug,), telemetry, f"{path}.telemetry")
        for index, pool in enumerate(spec.pools):
            put(
                "pool",
                (spec.slug, pool.gpu_type),
                pool.model_dump(exclude={"gpu_type"}),
                f"{path}.pools[{index}]",
            )
    for path, spec in items["tenants"]:
        put("tenant", (spec.slug,), spec.model_dump(include=set(st.FIELDS["tenant"])), path)
        for index, member in enumerate(spec.members):
            put("membership", (spec.slug, member.user), {"role": member.role}, f"{path}.members[{index}]")
        for gpu_type, quota in spec.quotas.items():
            put("quota", (spec.slug, gpu_type), quota.model_dump(), f"{path}.quotas.{gpu_type}")
        if spec.budget is not None:
            put("budget", (spec.slug,), spec.budget.model_dump(), f"{path}.budget")
    for path, spec in items["identities"]:
        put("identity", (spec.user,), {"posix_username": spec.posix_username}, path)
    for path, spec in items["rate_cards"]:
        key = (spec.gpu_type, spec.cluster or NO_CLUSTER, spec.effective_from.isoformat())
        put("rate_card", key, spec.model_dump(include=set(st.FIELDS["rate_card"])), path)
    for path, spec in items["grid_intensities"]:
        put("grid_intensity", (spec.region,), spec.model_dump(exclude={"region"}), path)
    return declared, origins, problems


def secret_settings(kind: str) -> set[str]:
    """A cluster kind's connection settings that are secrets: those its schema never shows."""
    try:
        fields = adapter_class(kind).connection_class.model_fields
    except ValueError:
        return set()
    return {name for name, info in fields.items() if info.repr is False}


def _declared_telemetry(spec, prune: bool, current: State, path: str, problems: list, read: bool):
    """The cluster's telemetry source as declared; left out, the defaults under `prune: true` and
    nothing (the portal's stays) without."""
    if spec.telemetry is None:
        return st.telemetry_defaults() if prune else None
    fields = spec.telemetry.model_dump()
    stored = (current["telemetry"].get((spec.slug,)) or {}).get("prometheus") or {}
    fields["prometheus"] = _resolve_secrets(
        spec.telemetry.prometheus,
        PrometheusSettings.secret_names(),
        stored,
        f"{path}.prometheus",
        problems,
        read,
    )
    return fields


def _resolve_secrets(
    settings: dict, secrets: set[str], stored: dict, path: str, problems: list[Problem], read: bool
) -> dict:
    """Settings with their secrets read from where the file references them (see make_plan)."""
    connection = dict(settings)
    for name in sorted(secrets & set(connection)):
        value = connection[name]
        where = f"{path}.{name}"
        if not isinstance(value, dict) or not set(value) <= set(SecretRef.model_fields):
            problems.append(
                Problem(
                    where,
                    "A secret is never written inline: reference it with {env: NAME}, "
                    "{file: PATH} or {keep: true}.",
                )
            )
            continue
        try:
            ref = SecretRef.model_validate(value)
        except pydantic.ValidationError as exc:
            problems.append(Problem(where, exc.errors()[0]["msg"].removeprefix("Value error, ") + "."))
            continue
        if not read and not ref.keep:
            resolved = stored.get(name, {} if name == "headers" else f"(from {ref.env or ref.file})")
        else:
            resolved = _read_secret(ref, name, stored, where, problems)
        if resolved is not None:
            connection[name] = resolved
    return connection


def _read_secret(ref: SecretRef, name: str, stored: dict, where: str, problems: list[Problem]):
    if ref.keep:
        if name not in stored:
            problems.append(Problem(where, "The portal holds no value to keep; use {env: …} or {file: …}."))
            return None
        return stored[name]
    if ref.env is not None:
        text = os.environ.get(ref.env)
        if text is None:
            problems.append(Problem(where, f"The environment variable {ref.env} is not set."))
            return None
    else:
        try:
            text = Path(ref.file).read_text().removesuffix("\n")
        except OSError as exc:
            problems.append(Problem(where, f"Cannot read {ref.file}: {exc.strerror}."))
            return None
    if name == "headers":  # a mapping, given as YAML or JSON text
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError:
            problems.append(Problem(where, "The secret must be a YAML or JSON mapping."))
            return None
    return text


# --- checks on the desired state -----------------------------------------------------------------


def check(
    desired: State, declared: State, origins: dict, users: dict[str, int], current: State
) -> list[Problem]:
    problems: list[Problem] = []

    def where(kind: str, key: Key, attribute: str = "") -> str:
        path = origins.get((kind, key), f"({kind.replace('_', ' ')} {st.key_text(key)} in the portal)")
        return f"{path}.{attribute}" if attribute else path

    def refer(kind: str, key: Key, attribute: str, target_kind: str, target: str, what: str) -> None:
        if (kind, key) in origins and (target,) not in desired[target_kind]:
            problems.append(
                Problem(where(kind, key, attribute), f"No {what} {target!r} is declared or exists.")
            )

    gpu_types, tenants = desired["gpu_type"], desired["tenant"]
    for key in declared["pool"]:
        refer("pool", key, "gpu_type", "gpu_type", key[1], "GPU type")
    for key, fields in declared["tenant"].items():
        if fields["parent"] is not None:
            refer("tenant", key, "parent", "tenant", fields["parent"], "tenant")
    for key in declared["quota"]:
        if (key[1],) not in gpu_types:
            problems.append(Problem(where("quota", key), f"No GPU type {key[1]!r} is declared or exists."))
    for key in declared["rate_card"]:
        refer("rate_card", key, "gpu_type", "gpu_type", key[0], "GPU type")
        if key[1] != NO_CLUSTER:
            refer("rate_card", key, "cluster", "cluster", key[1], "cluster")
    for kind, attribute in (("membership", "user"), ("identity", "user")):
        for key in declared[kind]:
            if key[-1] not in users:
                problems.append(Problem(where(kind, key, attribute), f"No user {key[-1]!r} exists."))
    problems += _parent_cycles(tenants, where)
    problems += _quotas_within_parents(desired, current, origins, where)
    problems += _rate_card_overlaps(desired["rate_card"], where)
    problems += _billed_rate_cards(declared["rate_card"], current, where)
    problems += _posix_accounts(desired["identity"], where)
    problems += _model_rules(declared, current, where)
    problems += _telemetry_sources(declared, current, where)
    return problems


def _telemetry_sources(declared: State, current: State, where) -> list[Problem]:
    """A Prometheus source's settings, checked as the API checks them, wherever the file declares
    them or a source that reads them."""
    problems = []
    for key, fields in declared["telemetry"].items():
        if current["telemetry"].get(key) == fields:
            continue
        if fields["prometheus"] or fields["source"] == "prometheus":
            try:
                PrometheusSettings.parse(fields["prometheus"])
            except ValueError as exc:
                problems.append(Problem(where("telemetry", key, "prometheus"), str(exc)))
    return problems


def _parent_cycles(tenants: dict, where) -> list[Problem]:
    problems = []
    for key in tenants:
        seen, parent = {key[0]}, tenants[key]["parent"]
        while parent is not None and (parent,) in tenants:
            if parent in seen:
                problems.append(Problem(where("tenant", key, "parent"), "Tenants' parents form a cycle."))
                break
            seen.add(parent)
            parent = tenants[(parent,)]["parent"]
    return problems


def _quotas_within_parents(desired: State, current: State, origins: dict, where) -> list[Problem]:
    """A department's nominal bounds the sum of its projects' (quotas.nesting), per GPU type: an
    overrun the file makes appear or grow is refused at the projects' quotas the file declares (at
    the department's when it declares none of them)."""

    def tree(state: State) -> TenantTree:
        return TenantTree({key[0]: fields["parent"] for key, fields in state["tenant"].items()})

    def nominals(state: State) -> dict[str, dict[str, int]]:
        by_type: dict[str, dict[str, int]] = defaultdict(dict)
        for (tenant, gpu_type), fields in state["quota"].items():
            by_type[gpu_type][tenant] = fields["nominal"]
        return by_type

    problems = []
    before_tree, after_tree = tree(current), tree(desired)
    before, after = nominals(current), nominals(desired)
    for gpu_type in sorted(after):
        found = nesting.worsened(
            nesting.overruns(before_tree, before.get(gpu_type, {})),
            nesting.overruns(after_tree, after[gpu_type]),
        )
        for tenant, (nominal, total) in sorted(found.items()):
            below = nesting.just_below(after_tree, after[gpu_type], tenant)
            declared = [t for t in sorted(below) if ("quota", (t, gpu_type)) in origins]
            for changed in declared or [tenant]:
                problems.append(
                    Problem(
                        where("quota", (changed, gpu_type), "nominal"),
                        nesting.message(tenant, nominal, total, gpu_type, changed),
                    )
                )
    return problems


def _rate_card_overlaps(cards: dict, where) -> list[Problem]:
    problems = []
    by_price = defaultdict(list)
    for key, fields in cards.items():
        by_price[key[:2]].append((str(key[2]), key, fields["effective_until"]))
    for entries in by_price.values():
        entries.sort()
        for (_, before, until), (start, key, _) in itertools.pairwise(entries):
            if until is None or str(until) > start:
                problems.append(
                    Problem(
                        where("rate_card", key, "effective_from"),
                        f"Overlaps the rate card from {before[2]} for the same GPU type and cluster.",
                    )
                )
    return problems


def _billed_rate_cards(declared: dict, current: State, where) -> list[Problem]:
    """A rate card that has billed usage keeps its prices (RateCard.check_billed): a file may
    only end it, after the last day it billed. One query for all the cards the file changes."""
    changed = {
        current.ids["rate_card"][key]: key
        for key, fields in declared.items()
        if key in current["rate_card"] and current["rate_card"][key] != fields
    }
    if not changed:
        return []
    problems = []
    for pk, last in RateCard.objects.filter(pk__in=changed).billed_through().items():
        key = changed[pk]
        before, after = current["rate_card"][key], declared[key]
        for name in st.FIELDS["rate_card"]:
            if name == "effective_until" or before[name] == after[name]:
                continue
            problems.append(
                Problem(
                    where("rate_card", key, name),
                    f"This rate card has billed usage up to {last}: it cannot be changed. Declare a new "
                    "rate card from a date instead, and end this one that day.",
                )
            )
        until = after["effective_until"]
        if until != before["effective_until"] and until is not None and str(until) <= str(last):
            problems.append(
                Problem(
                    where("rate_card", key, "effective_until"),
                    f"This rate card has billed usage up to {last}: it can end on "
                    f"{last + timedelta(days=1)} at the earliest.",
                )
            )
    return problems


def _posix_accounts(identities: dict, where) -> list[Problem]:
    problems, owners = [], {}
    for key, fields in sorted(identities.items()):
        account = fields["posix_username"]
        if account in owners:
            problems.append(
                Problem(
                    where("identity", key, "posix_username"), f"{account} is already {owners[account]}'s."
                )
            )
        owners[account] = key[0]
    return problems


MODELS = {
    "gpu_type": GpuType,
    "cluster": Cluster,
    "telemetry": ClusterTelemetry,
    "pool": Pool,
    "tenant": Tenant,
    "membership": Membership,
    "identity": Identity,
    "quota": Quota,
    "budget": Budget,
    "rate_card": RateCard,
    "grid_intensity": GridIntensity,
}
# What identifies each kind, as model fields (for the model's own checks of the key's values).
KEY_FIELDS = {"gpu_type": ("slug",), "cluster": ("slug",), "tenant": ("slug",), "grid_intensity": ("region",)}


def _model_rules(declared: State, current: State, where) -> list[Problem]:
    """The models' own field rules and clean() for every declared object that is new or changed,
    without the database (what the portal already holds as declared passed them when saved)."""
    problems = []
    for kind, objects in declared.objects.items():
        model = MODELS[kind]
        relations = {f.name for f in model._meta.concrete_fields if f.is_relation}
        for key, fields in objects.items():
            if current[kind].get(key) == fields:
                continue
            values = {n: v for n, v in fields.items() if n not in relations and n != "connection"}
            values.update(zip(KEY_FIELDS.get(kind, ()), key, strict=False))
            if kind == "rate_card":
                values["effective_from"] = key[2]
            instance = model(**values)
            if kind == "cluster":
                instance.connection = fields["connection"]
            try:
                instance.clean_fields(
                    exclude=relations | {"effective_from"} if kind == "rate_card" else relations
                )
                if kind != "rate_card":  # its clean() asks the database about overlaps: see above
                    instance.clean()
                elif fields["effective_until"] and str(fields["effective_until"]) <= str(key[2]):
                    raise ValidationError({"effective_until": "The end must come after the start."})
            except ValidationError as exc:
                for name, messages in exc.message_dict.items():
                    attribute = "" if name == NON_FIELD_ERRORS else name
                    problems += [Problem(where(kind, key, attribute), m) for m in messages]
    return problems


# --- the difference ------------------------------------------------------------------------------


def diff(current: State, desired: State) -> list[Change]:
    changes = []
    for kind in st.KINDS:
        have, want = current[kind], desired[kind]
        for key in sorted(want.keys() - have.keys()):
            if kind == "telemetry" and want[key] == st.telemetry_defaults():
                continue  # a new cluster's: made with these on first use
            changes.append(Change("create", kind, key, _fields(kind, None, want[key])))
        for key in sorted(want.keys() & have.keys()):
            fields = _fields(kind, have[key], want[key])
            if fields:
                changes.append(Change("change", kind, key, fields))
    for kind in reversed(st.KINDS):
        if kind == "telemetry":
            continue  # goes with its cluster
        for key in sorted(current[kind].keys() - desired[kind].keys()):
            changes.append(Change("delete", kind, key))
    return changes


def _fields(kind: str, old: dict | None, new: dict) -> list[tuple[str, Any, Any]]:
    fields = []
    for name in st.FIELDS[kind]:
        before = None if old is None else old[name]
        after = new[name]
        if name == "connection":
            fields += _setting_fields(name, secret_settings(new["kind"]), before, after, created=old is None)
        elif kind == "telemetry" and name == "prometheus":
            fields += _setting_fields(name, PrometheusSettings.secret_names(), before, after, old is None)
        elif old is None or before != after:
            fields.append((name, before, after))
    return fields


def _setting_fields(prefix: str, secrets: set[str], old: dict | None, new: dict, created: bool) -> list:
    """Settings (a cluster's connection, a Prometheus source's) one by one, secrets masked."""
    old = old or {}
    fields = []
    for name in sorted(old.keys() | new.keys()):
        if not created and old.get(name) == new.get(name):
            continue
        mask = (lambda v: None if v is None else SECRET_SHOWN) if name in secrets else (lambda v: v)
        fields.append((f"{prefix}.{name}", mask(old.get(name)), mask(new.get(name))))
    return fields


# --- what blocks a deletion ----------------------------------------------------------------------


def _add_blockers(changes: list[Change], current: State) -> None:
    """What the apps say still needs each object to be deleted (factory.signals.deletion_blockers):
    one question per kind of object deleted."""
    deleted: dict[str, dict[int, Change]] = defaultdict(dict)
    for change in changes:
        if change.action == "delete":
            deleted[change.kind][current.ids[change.kind][change.key]] = change
    for kind, by_id in deleted.items():
        for pk, reasons in blockers(MODELS[kind], by_id).items():
            by_id[pk].blocked_by += reasons
