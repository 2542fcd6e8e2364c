"""The quotas' own change log (QuotaChange) moves into the audit trail (django-auditlog's
LogEntry), where every administrative change now is: the rows of one change (one save, by one
user, at one time) become one entry of its fields' before → after, dated and attributed as they
were, pointing at the change set of a platform file where they came from one."""

from collections import defaultdict

from django.db import migrations

DELETE, UPDATE = 2, 1  # auditlog's LogEntry.Action


def _value(text: str):
    return text if text != "" else None


def quota_history_into_audit_trail(apps, schema_editor):
    change_model = apps.get_model("quotas", "QuotaChange")
    if not change_model.objects.exists():
        return
    content_type = apps.get_model("contenttypes", "ContentType")
    log_entry = apps.get_model("auditlog", "LogEntry")
    quota_type, _ = content_type.objects.get_or_create(app_label="quotas", model="quota")
    budget_type, _ = content_type.objects.get_or_create(app_label="quotas", model="budget")
    quotas = {(q.tenant_id, q.gpu_type_id): q.pk for q in apps.get_model("quotas", "Quota").objects.all()}
    budgets = {b.tenant_id: b.pk for b in apps.get_model("quotas", "Budget").objects.all()}

    changes = defaultdict(list)
    rows = change_model.objects.select_related("tenant", "gpu_type", "changed_by").order_by(
        "changed_at", "id"
    )
    for row in rows:
        changes[row.tenant_id, row.gpu_type_id, row.changed_by_id, row.changed_at, row.change_set_id].append(
            row
        )
    entries = []
    for (tenant_id, gpu_type_id, _, changed_at, change_set_id), group in changes.items():
        first = group[0]
        deleted = any(r.field == "quota" and r.new_value == "deleted" for r in group)
        if gpu_type_id is not None:
            pk = quotas.get((tenant_id, gpu_type_id))
            repr_ = f"{first.tenant.slug}/{first.gpu_type.slug}"
            kind = quota_type
        else:
            pk = budgets.get(tenant_id)
            repr_ = f"{first.tenant.slug} budget"
            kind = budget_type
        if deleted:
            fields = {"nominal": [_value(first.old_value), None]}
        else:
            fields = {r.field: [_value(r.old_value), _value(r.new_value)] for r in group}
        extra = {"migrated_from": "quota history"}
        if change_set_id is not None:
            extra["change_set"] = change_set_id
        user = first.changed_by
        entries.append(
            log_entry(
                content_type=kind,
                object_pk="" if pk is None or deleted else str(pk),
                object_id=None if deleted else pk,
                object_repr=repr_,
                action=DELETE if deleted else UPDATE,
                changes=fields,
                actor=user,
                actor_email=(user.email or None) if user else None,
                timestamp=changed_at,
                additional_data=extra,
            )
        )
    log_entry.objects.bulk_create(entries, batch_size=1000)


class Migration(migrations.Migration):
    dependencies = [
        ("auditlog", "0017_add_actor_email"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("quotas", "0003_quota_change_in_change_set"),
    ]

    operations = [
        migrations.RunPython(quota_history_into_audit_trail, migrations.RunPython.noop),
        migrations.DeleteModel(name="QuotaChange"),
    ]
