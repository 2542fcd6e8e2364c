"""Who sees and changes billing, by permission (factory.roles): finance, auditors and platform
admins read every tenant's bill; finance alone sets prices, grants credits and corrections and
closes months."""

from __future__ import annotations

from rest_framework import permissions

from factory.querysets import administered_ids, administers

READ_BILLING = "billing.view_usagerecord"
CORRECT_LEDGER = "billing.add_usagerecord"  # credits and corrections: new ledger lines
CLOSE_MONTHS = "billing.add_monthclose"
SET_PRICES = ("billing.add_ratecard", "billing.change_ratecard")


def reads_billing(user) -> bool:
    """Every tenant's bill: reports, exports, ledger lines, invoices."""
    return user.is_authenticated and user.has_perm(READ_BILLING)


def corrects_ledger(user) -> bool:
    return user.is_authenticated and user.has_perm(CORRECT_LEDGER)


def closes_months(user) -> bool:
    return user.is_authenticated and user.has_perm(CLOSE_MONTHS)


def sets_prices(user) -> bool:
    return user.is_authenticated and user.has_perms(SET_PRICES)


def administered(user) -> list[int]:
    """The tenants whose bill (invoices, credits, corrections) the user sees as their admin: those
    they administer, and every tenant below them."""
    return administered_ids(user)


def sees_bill_of(user, tenant) -> bool:
    """Those who read billing (finance) see every tenant's bill; the admins of a tenant, or of one
    above it, its own."""
    return reads_billing(user) or administers(user, tenant)


class BillingAccess(permissions.BasePermission):
    """Reads: whoever reads billing. Writes: also the permission the view names in
    `billing_write_permission` (by default granting credits and corrections, finance's)."""

    def has_permission(self, request, view) -> bool:
        user = request.user
        if not reads_billing(user):
            return False
        if request.method in permissions.SAFE_METHODS:
            return True
        return user.has_perm(getattr(view, "billing_write_permission", CORRECT_LEDGER))
