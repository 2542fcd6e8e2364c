"""The platform as code over HTTP: a plan of a posted platform file (platform admins), and the
file format's JSON Schema, which editors fetch to validate platform files."""

from __future__ import annotations

from collections import defaultdict

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework import parsers, permissions, serializers
from rest_framework.exceptions import ParseError, ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from factory.api.permissions import HasPermission
from factory.roles import APPLY_PLATFORM_FILES

from .. import loading, planning, schema


class YAMLParser(parsers.BaseParser):
    """A platform file as it is kept, in YAML (JSON is YAML too)."""

    media_type = "application/yaml"

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            text = stream.read().decode("utf-8")
        except UnicodeDecodeError:
            raise ParseError("The body is not UTF-8 text.") from None
        try:
            return loading.parse_yaml(text)
        except loading.Invalid as exc:
            raise ParseError(str(exc)) from None


def problems_response(exc: loading.Invalid) -> ValidationError:
    """Every problem under its path in the file, as field errors are everywhere in the API."""
    errors = defaultdict(list)
    for problem in exc.problems:
        errors[problem.path or "non_field_errors"].append(problem.message)
    return ValidationError(dict(errors))


class FieldChangeSerializer(serializers.Serializer):
    field = serializers.CharField()
    old = serializers.JSONField(allow_null=True, help_text='Secrets are shown as "(secret)".')
    new = serializers.JSONField(allow_null=True)


class ChangeSerializer(serializers.Serializer):
    action = serializers.ChoiceField(choices=["create", "change", "delete"])
    kind = serializers.CharField(help_text="gpu_type, cluster, pool, tenant, membership, identity, quota, …")
    key = serializers.CharField(help_text='Natural key, parts joined by "/" ("*" for any cluster).')
    fields = FieldChangeSerializer(many=True)
    blocked_by = serializers.ListField(
        child=serializers.CharField(), help_text="Why a deletion cannot happen (jobs, ledger lines, …)."
    )


class SummarySerializer(serializers.Serializer):
    create = serializers.IntegerField()
    change = serializers.IntegerField()
    delete = serializers.IntegerField()


class PlanSerializer(serializers.Serializer):
    has_changes = serializers.BooleanField()
    summary = SummarySerializer()
    changes = ChangeSerializer(many=True)


EXAMPLE = """gpu_types:
- {slug: h100, name: NVIDIA H100}
tenants:
- slug: vision
  name: Vision
  quotas:
    h100: {nominal: 8}
"""


class PlanView(APIView):
    """What applying a platform file would create, change and delete, field by field, against the
    portal as it is now; nothing is changed (apply with `manage.py platform apply`). The body is
    the file, in YAML (`Content-Type: application/yaml`) or JSON; its format is the JSON Schema at
    /api/v1/platform/schema/. A file with problems is refused with each one under its path in the
    file (`tenants[3].quotas.h100.nominal`). Secrets referenced by `{env}` or `{file}` are not read
    here (the web server's environment and files are its own): they count as unchanged where the
    portal holds one; `manage.py platform plan` reads them."""

    permission_classes = [HasPermission]
    required_permission = APPLY_PLATFORM_FILES  # platform admins
    parser_classes = [parsers.JSONParser, YAMLParser]

    @extend_schema(
        operation_id="platform_plan",
        request={"application/yaml": OpenApiTypes.STR, "application/json": OpenApiTypes.OBJECT},
        responses={200: PlanSerializer},
        examples=[OpenApiExample("A tenant with a quota", value=EXAMPLE, media_type="application/yaml")],
    )
    def post(self, request):
        try:
            plan = planning.make_plan(loading.from_data(request.data), read_secrets=False)
        except loading.Invalid as exc:
            raise problems_response(exc) from None
        return Response(plan.as_json())


class SchemaView(APIView):
    """The platform file's JSON Schema (draft 2020-12), for editors to validate platform files."""

    authentication_classes = []
    permission_classes = [permissions.AllowAny]

    @extend_schema(operation_id="platform_schema", responses={200: OpenApiTypes.OBJECT}, auth=[])
    def get(self, request):
        return Response(schema.json_schema())
