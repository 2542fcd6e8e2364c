from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import serializers

from factory.api.serializers import StrictFieldsMixin
from factory.models import GpuType

from ..models import Job, JobEvent
from ..submission import check_gpu_request
from ..validators import validate_env


class JobSerializer(serializers.ModelSerializer):
    tenant = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    owner = serializers.SlugRelatedField(slug_field="username", read_only=True)
    gpu_type = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    cluster = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    cancel_requested = serializers.SerializerMethodField()
    queue_position = serializers.IntegerField(read_only=True, allow_null=True, default=None)

    class Meta:
        model = Job
        fields = [
            "id",
            "uid",
            "tenant",
            "owner",
            "name",
            "command",
            "image",
            "gpu_type",
            "gpu_count",
            "cpus",
            "memory_gb",
            "time_limit_minutes",
            "priority",
            "env",
            "state",
            "reason",
            "cluster",
            "external_id",
            "exit_code",
            "created_at",
            "admitted_at",
            "submitted_at",
            "started_at",
            "ended_at",
            "cancel_requested",
            "queue_position",
            "attempt",
            "preempted_seconds",
        ]
        read_only_fields = fields

    def get_cancel_requested(self, job: Job) -> bool:
        return job.cancel_requested_at is not None


class JobCreateSerializer(StrictFieldsMixin, serializers.ModelSerializer):
    # The tenant is resolved by the view (a tenant you do not belong to is a 404, not a 400).
    tenant = serializers.SlugField(write_only=True)
    gpu_type = serializers.SlugRelatedField(
        slug_field="slug",
        queryset=GpuType.objects.all(),
        error_messages={"does_not_exist": "Unknown GPU type {value}."},
    )
    env = serializers.JSONField(required=False, default=dict, validators=[validate_env])

    class Meta:
        model = Job
        fields = [
            "tenant",
            "name",
            "command",
            "image",
            "gpu_type",
            "gpu_count",
            "cpus",
            "memory_gb",
            "time_limit_minutes",
            "priority",
            "env",
        ]
        extra_kwargs = {"time_limit_minutes": {"required": True}, "gpu_count": {"required": True}}

    def validate(self, attrs):
        try:
            check_gpu_request(attrs["gpu_type"], attrs["gpu_count"])
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.message_dict) from None
        return attrs


class JobEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = JobEvent
        fields = ["id", "kind", "state", "message", "at"]


class LogChunkSerializer(serializers.Serializer):
    offset = serializers.IntegerField()
    next_offset = serializers.IntegerField()
    text = serializers.CharField()
    complete = serializers.BooleanField()
