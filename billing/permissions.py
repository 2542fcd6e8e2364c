from __future__ import annotations

from rest_framework import permissions

from factory.choices import FINANCE_GROUP


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


class IsFinance(permissions.BasePermission):
    def has_permission(self, request, view) -> bool:
        return is_finance(request.user)
