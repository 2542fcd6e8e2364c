from __future__ import annotations

from rest_framework import permissions

from factory.choices import FINANCE_GROUP
from factory.querysets import administered_ids, administers


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


def administered(user) -> list[int]:
    """The tenants whose bill (invoices, credits, corrections) the user sees as their admin: those
    they administer, and every tenant below them."""
    return administered_ids(user)


def sees_bill_of(user, tenant) -> bool:
    """Finance sees every tenant's bill; the admins of a tenant, or of one above it, its own."""
    return is_finance(user) or administers(user, tenant)


class IsFinance(permissions.BasePermission):
    def has_permission(self, request, view) -> bool:
        return is_finance(request.user)
