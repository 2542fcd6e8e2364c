from __future__ import annotations

import copy

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from rest_framework import serializers
from rest_framework.exceptions import PermissionDenied

from factory.choices import Role
from factory.hierarchy import parent_problems
from factory.models import (
    Cluster,
    GpuType,
    Identity,
    Membership,
    Pool,
    Tenant,
    posix_username_validator,
    validate_not_root,
)


class ReusedFieldsMixin:
    """Fields built once per serializer class, shallow-copied for each instance. DRF deep-copies
    every declared field for every instance (re-running each field's __init__), which on a hot
    path such as job submission costs more than the validation itself. Binding a field to its
    serializer only sets attributes on the copy; nested serializers are still deep-copied."""

    def get_fields(self):
        cls = type(self)
        prototypes = cls.__dict__.get("_prototype_fields")
        if prototypes is None:
            prototypes = copy.deepcopy(self._declared_fields)
            cls._prototype_fields = prototypes
        return {
            name: copy.deepcopy(field) if isinstance(field, serializers.BaseSerializer) else copy.copy(field)
            for name, field in prototypes.items()
        }


class SlugRelatedField(serializers.SlugRelatedField):
    """A writable reference by slug. No slug holds a NUL character, and PostgreSQL refuses one in
    a query (a server error), so it is a field error before the look-up."""

    def to_internal_value(self, data):
        if isinstance(data, str) and "\x00" in data:
            raise serializers.ValidationError("Null characters are not allowed.")
        return super().to_internal_value(data)


class StrictFieldsMixin:
    """Unknown fields are an error, not silently dropped: a typo must not change what runs."""

    def to_internal_value(self, data):
        if isinstance(data, dict):
            unknown = set(data) - {name for name, f in self.fields.items() if not f.read_only}
            if unknown:
                raise serializers.ValidationError({name: ["Unknown field."] for name in sorted(unknown)})
        return super().to_internal_value(data)


class TenantSerializer(StrictFieldsMixin, serializers.ModelSerializer):
    parent = SlugRelatedField(
        slug_field="slug", queryset=Tenant.objects.all(), required=False, allow_null=True
    )

    class Meta:
        model = Tenant
        fields = ["slug", "name", "parent", "cost_center", "regions", "created_at"]
        read_only_fields = ["created_at"]

    def validate_regions(self, value):
        if not isinstance(value, list) or not all(isinstance(r, str) and r.strip() for r in value):
            raise serializers.ValidationError("Give a list of region names.")
        return sorted({r.strip() for r in value})

    def validate_parent(self, parent):
        if self.instance is not None:
            problems = parent_problems(self.instance, parent)
            if problems:
                raise serializers.ValidationError(problems)
        return parent


class MembershipSerializer(StrictFieldsMixin, serializers.ModelSerializer):
    username = SlugRelatedField(
        source="user",
        slug_field="username",
        queryset=get_user_model().objects.filter(is_active=True),
        error_messages={"does_not_exist": "No active user named {value}."},
    )
    role = serializers.ChoiceField(choices=Role.choices, default=Role.MEMBER)
    # The user's, not the membership's: the same in every tenant. Taken as sent, never trimmed.
    posix_username = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=32,
        trim_whitespace=False,
        validators=[posix_username_validator, validate_not_root],
        help_text="The user's own POSIX account, which their Slurm jobs run as (in every tenant). "
        "Only platform admins set it; empty removes it.",
    )

    class Meta:
        model = Membership
        fields = ["username", "role", "posix_username", "created_at"]
        read_only_fields = ["created_at"]

    def validate(self, attrs):
        tenant = self.context["tenant"]
        user = attrs.get("user")
        if self.instance is None and Membership.objects.filter(tenant=tenant, user=user).exists():
            raise serializers.ValidationError({"username": [f"{user} is already a member of {tenant}."]})
        if "posix_username" in attrs:
            # A tenant admin who could name the account would choose whose files the jobs can touch.
            if not self.context["request"].user.has_perm("factory.change_identity"):
                raise PermissionDenied("Only platform admins set POSIX usernames.")
            name = attrs["posix_username"]
            owner = user or self.instance.user
            if name and Identity.objects.filter(posix_username=name).exclude(user=owner).exists():
                raise serializers.ValidationError(
                    {"posix_username": [f"{name} is already another user's POSIX account."]}
                )
        return attrs

    def create(self, validated_data):
        posix_username = validated_data.pop("posix_username", None)
        with transaction.atomic():
            membership = super().create(validated_data)
            self._set_posix_username(membership.user, posix_username)
        return membership

    def update(self, instance, validated_data):
        posix_username = validated_data.pop("posix_username", None)
        with transaction.atomic():
            membership = super().update(instance, validated_data)
            self._set_posix_username(membership.user, posix_username)
        return membership

    def to_representation(self, membership):
        data = super().to_representation(membership)
        identity = getattr(membership.user, "identity", None)
        data["posix_username"] = identity.posix_username if identity else ""
        return data

    @staticmethod
    def _set_posix_username(user, name: str | None) -> None:
        if name is not None:
            user.identity, _ = Identity.objects.update_or_create(user=user, defaults={"posix_username": name})


class GpuTypeSerializer(StrictFieldsMixin, serializers.ModelSerializer):
    class Meta:
        model = GpuType
        fields = ["slug", "name", "memory_gb", "board_power_watts"]


class PoolSerializer(StrictFieldsMixin, serializers.ModelSerializer):
    """A cluster's GPUs of one type (the cluster is the URL's). The GPU type is set when the pool
    is made; a pool of another type is another pool."""

    gpu_type = SlugRelatedField(
        slug_field="slug",
        queryset=GpuType.objects.all(),
        error_messages={"does_not_exist": "Unknown GPU type {value}."},
    )

    class Meta:
        model = Pool
        fields = ["gpu_type", "capacity", "partition", "node_selector"]
        validators = []  # one pool per GPU type: checked below, as a field message

    def validate_node_selector(self, value):
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise serializers.ValidationError("Give a mapping of node label names to values.")
        return value

    def validate(self, attrs):
        cluster = self.context["cluster"]
        gpu_type = attrs.get("gpu_type")
        if self.instance is not None and gpu_type is not None and gpu_type != self.instance.gpu_type:
            raise serializers.ValidationError({"gpu_type": ["A pool's GPU type cannot change."]})
        if self.instance is None and Pool.objects.filter(cluster=cluster, gpu_type=gpu_type).exists():
            raise serializers.ValidationError({"gpu_type": [f"{cluster} already has a {gpu_type} pool."]})
        return attrs


class ClusterSerializer(StrictFieldsMixin, serializers.ModelSerializer):
    # Connection settings may hold credentials: accepted on write, never shown back.
    connection = serializers.JSONField(write_only=True, required=False)
    pools = PoolSerializer(many=True, read_only=True)  # changed at clusters/{slug}/pools/

    class Meta:
        model = Cluster
        fields = [
            "slug",
            "name",
            "kind",
            "region",
            "connection",
            "enabled",
            "draining",
            "health",
            "health_checked_at",
            "pools",
        ]
        read_only_fields = ["health", "health_checked_at"]

    def validate(self, attrs):
        from factory.adapters import adapter_class

        kind = attrs.get("kind", getattr(self.instance, "kind", None))
        connection = attrs.get("connection", getattr(self.instance, "connection", {}) or {})
        try:
            adapter_class(kind).parse_connection(connection)
        except ValueError as exc:
            raise serializers.ValidationError({"connection": [str(exc)]}) from None
        return attrs


class TokenCredentialsSerializer(serializers.Serializer):
    # No longer than a username can be: a failed sign-in is recorded under the name given.
    username = serializers.CharField(
        max_length=get_user_model()._meta.get_field(get_user_model().USERNAME_FIELD).max_length
    )
    password = serializers.CharField(trim_whitespace=False, write_only=True, style={"input_type": "password"})
    name = serializers.CharField(
        max_length=100, required=False, default="", allow_blank=True, help_text="Where the token is used."
    )
    expires_in_days = serializers.IntegerField(
        min_value=1,
        required=False,
        help_text="Days until the token expires (default FACTORY_TOKEN_DAYS, 90 unless configured).",
    )

    def validate_expires_in_days(self, value: int) -> int:
        if value > settings.FACTORY_TOKEN_MAX_DAYS:
            raise serializers.ValidationError(f"At most {settings.FACTORY_TOKEN_MAX_DAYS} days.")
        return value


class IssuedTokenSerializer(serializers.Serializer):
    token = serializers.CharField(help_text="Shown this once: only its digest is kept.")
    name = serializers.CharField()
    expires_at = serializers.DateTimeField()


class AuditEntrySerializer(serializers.Serializer):
    """One change in the audit trail."""

    id = serializers.IntegerField()
    timestamp = serializers.DateTimeField()
    user = serializers.CharField(source="actor.username", default=None, allow_null=True)
    action = serializers.SerializerMethodField()
    object_type = serializers.SerializerMethodField(help_text='"app.model", e.g. "factory.cluster".')
    object_id = serializers.CharField(source="object_pk")
    object = serializers.CharField(source="object_repr")
    changes = serializers.JSONField(
        help_text='Field: [before, after]; a set (a user\'s roles): {"type": "m2m", "operation", "objects"}.'
    )
    via = serializers.JSONField(
        source="additional_data", allow_null=True, help_text="How it was made: a change set, single sign-on."
    )
    remote_addr = serializers.IPAddressField(allow_null=True)

    def get_action(self, entry) -> str:
        from factory.audit import ACTION_NAMES

        return ACTION_NAMES.get(entry.action, "")

    def get_object_type(self, entry) -> str:
        return f"{entry.content_type.app_label}.{entry.content_type.model}"
