"""Who belongs to a tenant, and who may change that: the rules the members page and the API share.

- Tenant admins (a department's admins for its projects too) and platform admins add members,
  change roles and remove members; members see the list. A tenant is never left without an admin
  by a tenant admin (a platform admin may).
- Memberships made by single sign-on group rules are the identity provider's: changed there, not
  here (the next sign-in would undo the change).
- Anyone may ask to join a tenant; its admins approve (the requester becomes a member) or decline.
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from .choices import JoinState, MembershipSource, Role
from .models import JoinRequest, Membership, Tenant
from .querysets import administers


def may_manage(user, tenant: Tenant) -> bool:
    """Whoever may change any membership (platform admins), the tenant's admins, and the admins of
    the tenants above it."""
    if not user.is_authenticated:
        return False
    return administers_memberships(user) or administers(user, tenant)


def administers_memberships(user) -> bool:
    return user.has_perm("factory.change_membership")


def _require_manager(user, tenant: Tenant) -> None:
    if not may_manage(user, tenant):
        raise PermissionDenied("Only the tenant's admins and platform admins change its members.")


def check_change(membership: Membership, by, *, new_role: str | None = None, removing: bool = False) -> None:
    """Raise ValidationError when this change to a membership may not be made by `by`."""
    _require_manager(by, membership.tenant)
    if membership.source == MembershipSource.SSO:
        raise ValidationError(
            f"{membership.user}'s membership comes from a single sign-on group rule: change their "
            "groups at the identity provider (the next sign-in would undo a change made here)."
        )
    losing_admin = membership.role == Role.ADMIN and (removing or (new_role and new_role != Role.ADMIN))
    if losing_admin and not administers_memberships(by):
        admins = membership.tenant.memberships.filter(role=Role.ADMIN).exclude(pk=membership.pk)
        if not admins.exists():
            raise ValidationError(f"{membership.tenant} would have no admin left; make another admin first.")


def add_member(tenant: Tenant, username: str, role: str, by) -> Membership:
    _require_manager(by, tenant)
    user = get_user_model().objects.filter(username=username, is_active=True).first()
    if user is None:
        raise ValidationError({"username": f"No active user named {username}."})
    try:
        with transaction.atomic():
            return Membership.objects.create(tenant=tenant, user=user, role=role)
    except IntegrityError:
        raise ValidationError({"username": f"{user} is already a member of {tenant}."}) from None


def change_role(membership: Membership, role: str, by) -> None:
    check_change(membership, by, new_role=role)
    membership.role = role
    membership.save(update_fields=["role"])  # through save(): the audit trail records it


def remove_member(membership: Membership, by) -> None:
    check_change(membership, by, removing=True)
    membership.delete()


def request_to_join(user, tenant: Tenant, message: str) -> JoinRequest:
    if tenant.memberships.filter(user=user).exists():
        raise ValidationError({"tenant": f"You are already a member of {tenant}."})
    try:
        with transaction.atomic():
            return JoinRequest.objects.create(user=user, tenant=tenant, message=message)
    except IntegrityError:
        raise ValidationError({"tenant": f"You have already asked to join {tenant}."}) from None


def decide(request: JoinRequest, *, approve: bool, by) -> bool:
    """Approve (the requester becomes a member) or decline a pending request, once: a request
    decided meanwhile by another admin is left as it is. Returns whether this call decided it."""
    _require_manager(by, request.tenant)
    state = JoinState.APPROVED if approve else JoinState.DECLINED
    with transaction.atomic():
        decided = JoinRequest.objects.filter(pk=request.pk, state=JoinState.PENDING).update(
            state=state, decided_by=by, decided_at=timezone.now()
        )
        if decided and approve:
            Membership.objects.get_or_create(tenant=request.tenant, user=request.user)
    return bool(decided)
