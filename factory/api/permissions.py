"""The API's permission classes: by Django model permission (factory.roles), never by `is_staff`."""

from __future__ import annotations

from rest_framework import permissions


class ModelPermissionsOrReadOnly(permissions.DjangoModelPermissions):
    """Every signed-in user reads what the queryset lets them see; creating, changing and deleting
    need the model's add, change and delete permissions (platform admins')."""


class ModelPermissions(permissions.DjangoModelPermissions):
    """Reading needs the model's view permission too (prices: finance, auditors, platform admins)."""

    perms_map = {
        **permissions.DjangoModelPermissions.perms_map,
        "GET": ["%(app_label)s.view_%(model_name)s"],
        "HEAD": ["%(app_label)s.view_%(model_name)s"],
    }


class HasPermission(permissions.BasePermission):
    """The permission (or all the permissions) the view names in `required_permission`, for
    every method."""

    def has_permission(self, request, view) -> bool:
        user = request.user
        wanted = view.required_permission
        wanted = (wanted,) if isinstance(wanted, str) else tuple(wanted)
        return bool(user and user.is_authenticated and user.has_perms(wanted))
