"""Changing quotas and budgets: validated, recorded in the audit trail (factory.audit) as the
acting user's change, and followed by admission."""

from __future__ import annotations

from django.db import transaction

from factory import audit
from factory.hierarchy import hierarchy_lock

from .models import Budget, Quota
from .nesting import check_quota


def save_audited(instance: Quota | Budget, changes: dict, user) -> Quota | Budget:
    """Apply `changes` to a quota or budget (new or existing), validate it (ValidationError per
    field on bad input, nothing saved), save it (the trail records each changed field as `user`'s
    change) and run admission."""
    for name, value in changes.items():
        setattr(instance, name, value)
    with transaction.atomic(), audit.acting(user):
        # Checked under the tree's lock: two projects' quotas raised at once must not together
        # outgrow their department's.
        hierarchy_lock()
        instance.full_clean()
        instance.save()
        transaction.on_commit(_readmit, robust=True)
        if isinstance(instance, Quota):
            transaction.on_commit(lambda: _mirror(instance.tenant_id), robust=True)
    return instance


def delete_audited(quota: Quota, user) -> None:
    """Remove a quota (the tenant may no longer use that GPU type), recorded as `user`'s change,
    then run admission and bring the clusters' own limits in line."""
    tenant_id = quota.tenant_id
    with transaction.atomic(), audit.acting(user):
        hierarchy_lock()
        check_quota(quota, deleting=True)
        quota.delete()
        transaction.on_commit(_readmit, robust=True)
        transaction.on_commit(lambda: _mirror(tenant_id), robust=True)


def after_quota_changes(tenant_ids: list[int]) -> None:
    """Quotas or budgets changed outside save_audited (in bulk, already audited): run admission and
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
