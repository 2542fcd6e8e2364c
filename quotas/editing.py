"""Changing quotas and budgets: validated, audited field by field, and followed by admission."""

from __future__ import annotations

from django.db import transaction

from factory.hierarchy import hierarchy_lock

from .models import Budget, Quota, QuotaChange
from .nesting import check_quota


def _text(value) -> str:
    return "" if value is None else str(value)


def save_audited(instance: Quota | Budget, changes: dict, user) -> list[QuotaChange]:
    """Apply `changes` to a quota or budget (new or existing), validate it (ValidationError per
    field on bad input, nothing saved), save it, log every changed field and run admission."""
    created = instance.pk is None
    before = {} if created else {name: getattr(instance, name) for name in instance.AUDITED}
    for name, value in changes.items():
        setattr(instance, name, value)
    changed = [name for name in instance.AUDITED if created or before[name] != getattr(instance, name)]
    with transaction.atomic():
        # Checked under the tree's lock: two projects' quotas raised at once must not together
        # outgrow their department's.
        hierarchy_lock()
        instance.full_clean()
        instance.save()
        entries = QuotaChange.objects.bulk_create(
            QuotaChange(
                tenant_id=instance.tenant_id,
                gpu_type_id=getattr(instance, "gpu_type_id", None),
                field=name,
                old_value=_text(before.get(name)),
                new_value=_text(getattr(instance, name)),
                changed_by=user,
            )
            for name in changed
        )
        transaction.on_commit(_readmit, robust=True)
        if isinstance(instance, Quota):
            transaction.on_commit(lambda: _mirror(instance.tenant_id), robust=True)
    return entries


def delete_audited(quota: Quota, user) -> QuotaChange:
    """Remove a quota (the tenant may no longer use that GPU type), logged, then run admission
    and bring the clusters' own limits in line."""
    with transaction.atomic():
        hierarchy_lock()
        check_quota(quota, deleting=True)
        entry = QuotaChange.objects.create(
            tenant_id=quota.tenant_id,
            gpu_type_id=quota.gpu_type_id,
            field="quota",
            old_value=_text(quota.nominal),
            new_value="deleted",
            changed_by=user,
        )
        quota.delete()
        transaction.on_commit(_readmit, robust=True)
        transaction.on_commit(lambda: _mirror(entry.tenant_id), robust=True)
    return entry


def after_quota_changes(tenant_ids: list[int]) -> None:
    """Quotas or budgets changed outside save_audited (in bulk, already logged): run admission and
    bring the tenants' limits on the clusters in line. Call it once the change has committed."""
    _readmit()
    if tenant_ids:
        from .tasks import mirror_limits

        mirror_limits.delay(tenant_ids)


def _readmit() -> None:
    from .tasks import admit_pending

    admit_pending.delay()


def _mirror(tenant_id: int) -> None:
    from .tasks import mirror_limits

    mirror_limits.delay([tenant_id])
