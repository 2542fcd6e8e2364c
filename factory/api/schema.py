"""The OpenAPI schema documents the errors every operation can answer with, not only its success.

DRF answers the same way across the API: a field error is `{"field": ["message"]}` (nested for
nested fields, `non_field_errors` for the request as a whole), anything else `{"detail": "message"}`.
Which of those an operation can return follows from the view: authentication and permissions
(401, 403), path parameters and cursor pages (404), a body or filters (400), a body in a media
type no parser reads (415), throttles (429), deleting what other rows protect (409). Views
document the errors of their own (a 409, a 404 for a tenant named in the body) with
`extend_schema(responses=...)`. Request bodies of serializers that refuse unknown fields say so.
"""

from __future__ import annotations

from http import HTTPStatus

from django.db import models
from drf_spectacular import openapi
from drf_spectacular.plumbing import ResolvedComponent
from rest_framework import permissions, serializers

from .serializers import StrictFieldsMixin

PAGINATION_PARAMETERS = frozenset({"cursor", "page_size"})

FIELD_ERRORS = {
    "type": "object",
    "description": "Messages per field (per key for nested fields); `non_field_errors` for the "
    "request as a whole.",
    "additionalProperties": {
        "oneOf": [
            {"type": "array", "items": {"type": "string"}},
            {"$ref": "#/components/schemas/FieldErrors"},
        ]
    },
}


class ErrorDetail(serializers.Serializer):
    """An error that concerns the request as a whole."""

    detail = serializers.CharField()


class AutoSchema(openapi.AutoSchema):
    def _map_basic_serializer(self, serializer, direction):
        schema = super()._map_basic_serializer(serializer, direction)
        strict = serializer if isinstance(serializer, type) else type(serializer)
        if direction == "request" and issubclass(strict, StrictFieldsMixin):
            schema["additionalProperties"] = False  # an unknown field is a 400
        return schema

    def _get_response_bodies(self, direction="response"):
        responses = super()._get_response_bodies(direction)
        if direction != "response":
            return responses
        for code in sorted(self._error_codes()):
            responses.setdefault(str(code), self._error_response(code))
        return responses

    def _error_codes(self) -> set[int]:
        codes = set()
        perms = self.view.get_permissions()
        if perms and not any(isinstance(p, permissions.AllowAny) for p in perms):
            codes.add(401)
            # Permission classes beyond "signed in" refuse some users; unsafe methods also need a
            # CSRF token under session authentication.
            strict = any(type(p) is not permissions.IsAuthenticated for p in perms)
            if strict or self.method not in permissions.SAFE_METHODS:
                codes.add(403)
        parameters = self._get_parameters()
        query = {p["name"] for p in parameters if p["in"] == "query"}
        if any(p["in"] == "path" for p in parameters) or "cursor" in query:
            codes.add(404)  # no such object, or another tenant's; a cursor that is not ours
        if query - PAGINATION_PARAMETERS:
            codes.add(400)
        if self._get_request_body():
            codes |= {400, 415}  # 415: a body in a media type no parser reads
        if self.view.get_throttles():
            codes.add(429)
        if self.method == "DELETE" and self._protected():
            codes.add(409)  # still in use (factory.api.exceptions)
        return codes

    def _protected(self) -> bool:
        model = getattr(getattr(self.view, "queryset", None), "model", None)
        return model is not None and any(
            rel.on_delete is models.PROTECT for rel in model._meta.related_objects
        )

    def _error_response(self, code: int) -> dict:
        schema = self.resolve_serializer(ErrorDetail, "response").ref
        if code == 400:
            field_errors = ResolvedComponent(
                name="FieldErrors", type=ResolvedComponent.SCHEMA, object="FieldErrors", schema=FIELD_ERRORS
            )
            self.registry.register_on_missing(field_errors)
            schema = {"oneOf": [field_errors.ref, schema]}
        return {
            "description": HTTPStatus(code).phrase,
            "content": {"application/json": {"schema": schema}},
        }
