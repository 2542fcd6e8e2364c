from __future__ import annotations

from rest_framework import permissions

from factory.choices import FINANCE_GROUP, Role


def is_finance(user) -> bool:
    """Finance reads everything billing (and nothing else); platform admins may too."""
    if not user.is_authenticated:
        return False
    if user.is_staff:
        return True
    cached = getattr(user, "_is_finance", None)
    if cached is None:
        cached = user._is_finance = user.groups.filter(name=FINANCE_GROUP).exists()
    return cached


def administered(user):
    """The tenants whose bill (invoices, credits, corrections) the user sees as their admin."""
    from factory.models import Membership

    return Membership.objects.filter(user=user, role=Role.ADMIN).values("tenant")


def sees_bill_of(user, tenant) -> bool:
    """Finance sees every tenant's bill; a tenant's admins their own."""
    if is_finance(user):
        return True
    return user.is_authenticated and administered(user).filter(tenant=tenant).exists()


class IsFinance(permissions.BasePermission):
    def has_permission(self, request, view) -> bool:
        return is_finance(request.user)
