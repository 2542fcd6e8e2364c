"""Applying a declaration: its plan, made and carried out in one transaction under a lock, so that
two applies at once run one after the other and the second plans against the first's result.

Everything is written in bulk (a query per kind and action, not per object) and recorded as one
change set with its author. Every object created, changed or deleted is in the audit trail
(factory.audit) as the author's change, naming the change set; admission runs once the
transaction has committed.
"""

from __future__ import annotations

from collections import defaultdict

from django.db import connection, transaction
from django.utils import timezone

from factory import audit, sealing
from factory.hierarchy import hierarchy_lock
from factory.models import ChangeSet, Identity, Tenant
from fleet.models import ClusterTelemetry
from fleet.sources.prometheus import PrometheusSettings
from quotas.editing import after_quota_changes

from . import state as st
from .loading import Declaration, Invalid, Problem
from .planning import MODELS, Change, Plan, json_value, make_plan

# pg_advisory_xact_lock's key: "platform" in ASCII, the one lock every apply takes.
LOCK_KEY = 0x706C6174666F726D


def apply(
    declaration: Declaration, author=None, source: str = "", expect: str | None = None
) -> tuple[Plan, ChangeSet | None]:
    """Plan and apply the declaration; Invalid (nothing written) if it is wrong, a deletion is
    blocked, or the plan is not the one `expect`ed (its digest: the plan someone reviewed, which
    the portal's changes since may have made another). Applying what the portal already holds
    writes nothing and records no change set."""
    with transaction.atomic():
        _lock()
        # And the tree's: a quota or a move made meanwhile by a form or the API must be seen by
        # the checks of nested quotas and loops.
        hierarchy_lock()
        plan = make_plan(declaration)
        if expect is not None and plan.digest != expect:
            raise Invalid(
                [
                    Problem(
                        "",
                        f"The plan is now {plan.digest}, not {expect}: the portal changed since. Plan again.",
                    )
                ]
            )
        if plan.blocked:
            raise Invalid(
                [
                    Problem(
                        f"{c.kind} {st.key_text(c.key)}", f"Cannot be deleted: {', '.join(c.blocked_by)}."
                    )
                    for c in plan.blocked
                ]
            )
        if not plan.has_changes:
            return plan, None
        change_set = ChangeSet.objects.create(
            author=author,
            source=(source or declaration.source)[:300],
            digest=declaration.digest,
            summary=plan.summary(),
            changes=[c.as_json() for c in plan.changes],
        )
        with audit.acting(author, via="platform file", change_set=change_set.pk):
            Writer(plan, change_set).write()
    return plan, change_set


def _lock() -> None:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [LOCK_KEY])
    # SQLite (development) serialises writing transactions by itself.


class Writer:
    def __init__(self, plan: Plan, change_set: ChangeSet) -> None:
        self.plan = plan
        self.change_set = change_set
        self.ids = {kind: dict(ids) for kind, ids in plan.current.ids.items()}
        self.by_action: dict[tuple[str, str], list[Change]] = defaultdict(list)
        for change in plan.changes:
            self.by_action[change.kind, change.action].append(change)

    def changed(self, kind: str, action: str) -> list[Change]:
        return self.by_action.get((kind, action), [])

    def id(self, kind: str, *key: str) -> int | None:
        return self.ids[kind].get(tuple(key))

    def write(self) -> None:
        for kind in reversed(st.KINDS):
            self.delete(kind)
        for kind in st.KINDS:
            self.create(kind)
            self.update(kind)
        self.audit_trail()
        tenants = {self.id("tenant", c.key[0]) for c in self.plan.changes if c.kind == "quota"}
        if tenants or self.changed("budget", "change") or self.changed("budget", "create"):
            transaction.on_commit(lambda: after_quota_changes(sorted(t for t in tenants if t)), robust=True)
        if any(c.kind in ("cluster", "pool") for c in self.plan.changes):
            from jobs.submission import forget_pool_caches

            transaction.on_commit(forget_pool_caches, robust=True)

    # --- one kind at a time ------------------------------------------------------------------

    def row(self, kind: str, key: st.Key, fields: dict):
        """A model instance of the desired object (its database id when it exists)."""
        values = dict(fields)
        if kind == "gpu_type" or kind == "cluster":
            values["slug"] = key[0]
        elif kind == "pool":
            values.update(cluster_id=self.id("cluster", key[0]), gpu_type_id=self.id("gpu_type", key[1]))
        elif kind == "tenant":
            values["slug"] = key[0]
            values["parent_id"] = None  # set once every tenant exists: see update()
            values.pop("parent")
        elif kind == "membership":
            values.update(tenant_id=self.id("tenant", key[0]), user_id=self.plan.users[key[1]])
        elif kind == "identity":
            values["user_id"] = self.plan.users[key[0]]
        elif kind in ("quota", "budget"):
            values["tenant_id"] = self.id("tenant", key[0])
            if kind == "quota":
                values["gpu_type_id"] = self.id("gpu_type", key[1])
        elif kind == "rate_card":
            values.update(
                gpu_type_id=self.id("gpu_type", key[0]),
                cluster_id=self.id("cluster", key[1]) if key[1] else None,
                effective_from=key[2],
            )
        elif kind == "grid_intensity":
            values["region"] = key[0]
        elif kind == "telemetry":
            secrets = PrometheusSettings.secret_names()
            settings = values.pop("prometheus")
            values.update(
                cluster_id=self.id("cluster", key[0]),
                prometheus={k: v for k, v in settings.items() if k not in secrets},
                prometheus_secrets_sealed=sealing.seal({k: v for k, v in settings.items() if k in secrets}),
            )
        instance = MODELS[kind](**values)
        instance.pk = self.id(kind, *key)
        return instance

    def create(self, kind: str) -> None:
        changes = self.changed(kind, "create")
        if not changes:
            return
        if kind == "telemetry":
            self.set_telemetry(changes)
            return
        rows = [self.row(kind, c.key, self.plan.desired[kind][c.key]) for c in changes]
        if kind == "identity":
            # A user may have an identity row without a POSIX account: give it one.
            Identity.objects.filter(user_id__in=[r.user_id for r in rows]).delete()
        created = MODELS[kind].objects.bulk_create(rows)
        for change, instance in zip(changes, created, strict=True):
            self.ids[kind][change.key] = instance.pk
        if kind == "tenant":
            self.set_parents([c.key for c in changes])

    def update(self, kind: str) -> None:
        changes = self.changed(kind, "change")
        if not changes:
            return
        if kind == "telemetry":
            self.set_telemetry(changes)
            return
        names = sorted({name.split(".")[0] for c in changes for name, _, _ in c.fields} - {"parent"})
        if names:
            rows = [self.row(kind, c.key, self.plan.desired[kind][c.key]) for c in changes]
            if any(f.name == "updated_at" for f in MODELS[kind]._meta.concrete_fields):
                now = timezone.now()  # bulk_update leaves auto_now fields as they were
                for row in rows:
                    row.updated_at = now
                names.append("updated_at")
            MODELS[kind].objects.bulk_update(rows, names, batch_size=500)
        if kind == "tenant":
            self.set_parents([c.key for c in changes if any(n == "parent" for n, _, _ in c.fields)])

    def set_telemetry(self, changes: list[Change]) -> None:
        """Clusters' telemetry sources, made or changed in one statement: a cluster's row may
        exist or not (the scraper makes it on first use, meanwhile too). Whether the source
        answers is judged afresh by the next cycle, as after a change by the API."""
        rows = [self.row("telemetry", c.key, self.plan.desired["telemetry"][c.key]) for c in changes]
        for row in rows:
            row.pk = None  # matched by its cluster
            row.unavailable_since, row.unavailable_reason = None, ""
        written = ClusterTelemetry.objects.bulk_create(
            rows,
            update_conflicts=True,
            unique_fields=["cluster"],
            update_fields=[
                "source",
                "enabled",
                "interval_seconds",
                "prometheus",
                "prometheus_secrets_sealed",
                "unavailable_since",
                "unavailable_reason",
            ],
        )
        for change, instance in zip(changes, written, strict=True):
            self.ids["telemetry"][change.key] = instance.pk

    def set_parents(self, keys: list[st.Key]) -> None:
        desired = self.plan.desired["tenant"]
        rows = []
        for key in keys:
            parent = desired[key]["parent"]
            rows.append(Tenant(pk=self.id("tenant", *key), parent_id=parent and self.id("tenant", parent)))
        if rows:
            # From the top first: every state on the way holds only parents the file declares, so
            # the database's loop check (factory.hierarchy) never sees a loop between two moves.
            Tenant.objects.filter(pk__in=[row.pk for row in rows]).update(parent=None)
            Tenant.objects.bulk_update(rows, ["parent"], batch_size=500)

    def delete(self, kind: str) -> None:
        changes = self.changed(kind, "delete")
        if not changes:
            return
        ids = [self.ids[kind].pop(c.key) for c in changes]
        if kind == "tenant":
            Tenant.objects.filter(pk__in=ids).update(parent=None)  # deleted children before parents
        MODELS[kind].objects.filter(pk__in=ids).delete()

    # --- the audit trail ------------------------------------------------------------------------

    def audit_trail(self) -> None:
        """Creations and changes, field by field as planned (secrets masked): bulk writes send no
        signals. Deletions went through the models' signals, each object recorded as it was."""
        audit.log_changes(
            [
                audit.BulkChange(
                    model=MODELS[c.kind],
                    pk=self.id(c.kind, *c.key),
                    label=f"{c.kind.replace('_', ' ')} {st.key_text(c.key)}",
                    action=c.action,
                    fields=[(name, json_value(old), json_value(new)) for name, old, new in c.fields],
                )
                for c in self.plan.changes
                if c.action != "delete"
            ]
        )
