from __future__ import annotations

import copy

from django.contrib.auth import get_user_model
from rest_framework import serializers

from factory.choices import Role
from factory.models import Cluster, GpuType, Membership, Pool, Tenant


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


class MembershipSerializer(StrictFieldsMixin, serializers.ModelSerializer):
    username = SlugRelatedField(
        source="user",
        slug_field="username",
        queryset=get_user_model().objects.filter(is_active=True),
        error_messages={"does_not_exist": "No active user named {value}."},
    )
    role = serializers.ChoiceField(choices=Role.choices, default=Role.MEMBER)

    class Meta:
        model = Membership
        fields = ["username", "role", "created_at"]
        read_only_fields = ["created_at"]

    def validate(self, attrs):
        tenant = self.context["tenant"]
        user = attrs.get("user")
        if self.instance is None and Membership.objects.filter(tenant=tenant, user=user).exists():
            raise serializers.ValidationError({"username": [f"{user} is already a member of {tenant}."]})
        return attrs


class GpuTypeSerializer(StrictFieldsMixin, serializers.ModelSerializer):
    class Meta:
        model = GpuType
        fields = ["slug", "name", "memory_gb", "board_power_watts"]


class PoolSerializer(serializers.ModelSerializer):
    gpu_type = serializers.SlugRelatedField(slug_field="slug", read_only=True)

    class Meta:
        model = Pool
        fields = ["gpu_type", "capacity", "partition", "node_selector"]


class ClusterSerializer(StrictFieldsMixin, serializers.ModelSerializer):
    # Connection settings may hold credentials: accepted on write, never shown back.
    connection = serializers.JSONField(write_only=True, required=False)
    pools = PoolSerializer(many=True, read_only=True)

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
