from __future__ import annotations

from rest_framework import permissions


class IsStaffOrReadOnly(permissions.BasePermission):
    """Platform admins write; every signed-in user reads what the queryset lets them see."""

    def has_permission(self, request, view) -> bool:
        if not (request.user and request.user.is_authenticated):
            return False
        return request.method in permissions.SAFE_METHODS or request.user.is_staff
