"""Errors the views leave to the framework, answered like every other API error."""

from __future__ import annotations

from django.db.models import ProtectedError
from rest_framework import exceptions, status
from rest_framework.views import exception_handler as drf_exception_handler


class Conflict(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "The request conflicts with the current state of the object."
    default_code = "conflict"


def exception_handler(exc, context):
    if isinstance(exc, ProtectedError):
        # Deleting what jobs, quotas, prices or the ledger still name: the caller's to resolve.
        users = sorted({str(obj._meta.verbose_name_plural) for obj in exc.protected_objects})
        exc = Conflict(f"Still in use by {', '.join(users)}; it cannot be deleted.")
    return drf_exception_handler(exc, context)
