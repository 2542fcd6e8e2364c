"""The Django admin, for holders of a platform role rather than for `is_staff` users: who enters
and what each sees and changes there are Django permissions (factory.roles)."""

from __future__ import annotations

from django.contrib import admin
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import ValidationError

from .roles import enters_admin


class AdminLoginForm(AdminAuthenticationForm):
    def confirm_login_allowed(self, user) -> None:
        AuthenticationForm.confirm_login_allowed(self, user)  # active accounts only
        if not enters_admin(user):
            raise ValidationError(
                "This account holds no platform role: the admin is for platform admins, finance "
                "and auditors.",
                code="invalid_login",
            )


class ReadOnlyAdmin(admin.ModelAdmin):
    """Records the portal writes and nobody edits by hand (the ledger, jobs, applied platform
    files, the hardware's history): listed and read in the admin, never added, changed or deleted."""

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class PortalAdminSite(admin.AdminSite):
    login_form = AdminLoginForm

    def has_permission(self, request) -> bool:
        return enters_admin(request.user)
