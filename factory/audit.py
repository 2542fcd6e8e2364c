"""The audit trail of every administrative change: who, when, before → after.

django-auditlog keeps it: each audited model is registered with it (in its app's ready()), and its
signal receivers write one LogEntry per create, change (the changed fields, old and new) and
delete, and per change of a many-to-many set (a user's roles). One table for every kind of object:
the trail is searched, paged and exported as one.

Who made a change comes from here rather than from auditlog's own middleware and `set_actor`: those
key their signal receivers by the time of day and do not nest, and read the user before DRF has
authenticated a token. Here one context variable holds the acting user (looked up when an entry is
written, so an API token's user counts), the client's address (as the proxy-aware middleware
found it) and how the change was made ("platform file", "single sign-on"); `acting()` nests.
Changes made in bulk (platform files) are written to the trail by `log_changes`.
"""

from __future__ import annotations

import ast
import contextlib
import csv
import ipaddress
import json
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass

from auditlog.models import LogEntry
from django.contrib.contenttypes.models import ContentType
from django.utils import timezone

from .adapters import adapter_class
from .choices import ClusterKind

SECRET_SHOWN = "(secret)"


@dataclass(frozen=True)
class Acting:
    user: Callable[[], object]  # the user, looked up when an entry is written; None for nobody
    remote_addr: str | None = None
    extra: tuple[tuple[str, object], ...] = ()


_acting: ContextVar[Acting | None] = ContextVar("factory_audit_acting", default=None)


@contextlib.contextmanager
def acting(user=None, *, remote_addr: str | None = None, **extra) -> Iterator[None]:
    """Changes made inside are `user`'s (a user, or a callable returning one), with `extra` (e.g.
    via="platform file", change_set=12) recorded beside them. Nested, the inner one counts; a
    `user` of None keeps the outer one's."""
    outer = _acting.get()
    lookup = user if callable(user) else (lambda: user)
    if user is None and outer is not None:
        lookup = outer.user
    merged = dict(outer.extra) if outer else {}
    merged.update(extra)
    if remote_addr is None and outer is not None:
        remote_addr = outer.remote_addr
    token = _acting.set(Acting(lookup, remote_addr, tuple(merged.items())))
    try:
        yield
    finally:
        _acting.reset(token)


def current_actor():
    context = _acting.get()
    if context is None:
        return None
    user = context.user()
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    return user


def attribute(sender, instance: LogEntry, **kwargs) -> None:
    """pre_save of a LogEntry: the acting user, their address and how the change was made."""
    if instance.pk is not None:
        return
    context = _acting.get()
    if context is None:
        return
    if instance.actor_id is None:
        actor = current_actor()
        if actor is not None:
            instance.actor = actor
            instance.actor_email = actor.email or None
    if instance.remote_addr is None:
        instance.remote_addr = context.remote_addr
    if context.extra:
        instance.additional_data = {**(instance.additional_data or {}), **dict(context.extra)}


class AuditContextMiddleware:
    """Changes made while answering a request are the signed-in user's (the session's, or the API
    token's once DRF has authenticated it: the user is looked up when an entry is written)."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        with acting(lambda: getattr(request, "user", None), remote_addr=client_address(request)):
            return self.get_response(request)


def client_address(request) -> str | None:
    """REMOTE_ADDR, as factory.middleware.ForwardedClientMiddleware set it from a trusted proxy's
    header (never a client's own X-Forwarded-For)."""
    address = request.META.get("REMOTE_ADDR") or ""
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return None


# --- what is recorded -----------------------------------------------------------------------------


def register(model, **options) -> None:
    """Put `model`'s changes in the trail (auditlog's registration, same options). What a creation
    or deletion records is the object's own fields: not its id (the entry names the object) nor
    the rows that point at it."""
    from auditlog.registry import auditlog

    if "include_fields" not in options:
        own = {field.name for field in model._meta.get_fields() if not field.concrete or field.primary_key}
        options["exclude_fields"] = [*options.get("exclude_fields", []), *sorted(own)]
    auditlog.register(model, **options)


def _secret_settings() -> set[str]:
    secrets = set()
    for kind in ClusterKind.values:
        fields = adapter_class(kind).connection_class.model_fields
        secrets |= {name for name, info in fields.items() if info.repr is False}
    return secrets


def mask_connection(value: str) -> str:
    """A cluster's connection settings as the trail keeps them: secrets (tokens, kubeconfigs,
    headers) as "(secret)", the rest as set."""
    try:
        settings = json.loads(value)
    except (TypeError, ValueError):
        try:
            settings = ast.literal_eval(value)  # a dict as Python writes it
        except (ValueError, SyntaxError):
            return SECRET_SHOWN
    if not isinstance(settings, dict):
        return SECRET_SHOWN
    secrets = _secret_settings()
    shown = {name: SECRET_SHOWN if name in secrets else setting for name, setting in settings.items()}
    return json.dumps(shown, sort_keys=True)


def mask_all(value: str) -> str:
    """A password hash: only that it changed is kept."""
    return SECRET_SHOWN


# --- writing changes made in bulk ----------------------------------------------------------------


@dataclass
class BulkChange:
    model: type
    pk: int
    label: str  # what the object is, e.g. "pool eu-slurm/h100"
    action: str  # create | change | delete
    fields: list[tuple[str, object, object]]  # (field, old, new)


ACTIONS = {
    "create": LogEntry.Action.CREATE,
    "change": LogEntry.Action.UPDATE,
    "delete": LogEntry.Action.DELETE,
}


def log_changes(changes: list[BulkChange]) -> list[LogEntry]:
    """Trail entries for changes written in bulk (bulk_create and bulk_update send no signals),
    attributed as `acting` says: one INSERT whatever their number."""
    if not changes:
        return []
    types = ContentType.objects.get_for_models(*{c.model for c in changes})
    context = _acting.get()
    actor = current_actor()
    now = timezone.now()
    entries = [
        LogEntry(
            content_type=types[change.model],
            object_pk=str(change.pk),
            object_id=change.pk,
            object_repr=change.label,
            action=ACTIONS[change.action],
            changes={name: [old, new] for name, old, new in change.fields},
            actor=actor,
            actor_email=(actor.email or None) if actor else None,
            remote_addr=context.remote_addr if context else None,
            additional_data=dict(context.extra) if context and context.extra else None,
            timestamp=now,
        )
        for change in changes
    ]
    return LogEntry.objects.bulk_create(entries)


# --- reading the trail ----------------------------------------------------------------------------

ACTION_NAMES = {
    LogEntry.Action.CREATE: "created",
    LogEntry.Action.UPDATE: "changed",
    LogEntry.Action.DELETE: "deleted",
    LogEntry.Action.ACCESS: "read",
}


def audited_types() -> list[ContentType]:
    """The kinds of object the trail records, by name."""
    from auditlog.registry import auditlog

    types = ContentType.objects.get_for_models(*auditlog.get_models())
    return sorted(types.values(), key=lambda t: (t.app_label, t.model))


def type_label(content_type: ContentType) -> str:
    model = content_type.model_class()
    return str(model._meta.verbose_name) if model else content_type.model


def _shown(value) -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return str(value)


def changes_of(entry: LogEntry) -> list[str]:
    """Each field an entry changed, as "field: before → after" ("groups: + auditor" for sets)."""
    lines = []
    for name, change in sorted((entry.changes or {}).items()):
        if isinstance(change, dict) and change.get("type") == "m2m":
            sign = "+" if change.get("operation") == "add" else "−"
            lines.append(f"{name}: {sign} {', '.join(change.get('objects', []))}")
        elif isinstance(change, list | tuple) and len(change) == 2:
            old, new = change
            if entry.action == LogEntry.Action.CREATE:
                lines.append(f"{name}: {_shown(new)}")
            elif entry.action == LogEntry.Action.DELETE:
                lines.append(f"{name}: {_shown(old)}")
            else:
                lines.append(f"{name}: {_shown(old)} → {_shown(new)}")
    return lines


def via_of(entry: LogEntry) -> str:
    data = entry.additional_data or {}
    parts = []
    if data.get("via"):
        parts.append(str(data["via"]))
    if data.get("change_set"):
        parts.append(f"change set {data['change_set']}")
    if data.get("source") == "sso":
        parts.append("by a group rule")
    if data.get("migrated_from"):
        parts.append(str(data["migrated_from"]))
    return ", ".join(parts)


CSV_HEADER = ["time", "user", "action", "object_type", "object_id", "object", "changes", "via", "address"]


def csv_rows(entries) -> Iterator[str]:
    """The trail as CSV text, a line at a time (for a streamed export)."""

    class Line:
        def write(self, text: str) -> str:
            return text

    writer = csv.writer(Line())
    yield writer.writerow(CSV_HEADER)
    for entry in entries:
        yield writer.writerow(
            [
                entry.timestamp.isoformat(),
                entry.actor.get_username() if entry.actor else "",
                ACTION_NAMES.get(entry.action, entry.action),
                f"{entry.content_type.app_label}.{entry.content_type.model}",
                entry.object_pk,
                entry.object_repr,
                "; ".join(changes_of(entry)),
                via_of(entry),
                entry.remote_addr or "",
            ]
        )
