from __future__ import annotations

from rest_framework import serializers

from factory.api.serializers import StrictFieldsMixin

from ..choices import TelemetrySource
from ..models import ClusterTelemetry, Gpu, HealthEvent


class TelemetrySerializer(StrictFieldsMixin, serializers.ModelSerializer):
    """A cluster's telemetry source. Prometheus credentials (`bearer_token`, `password` in
    `prometheus`) are write-only: given, they replace the stored ones; left out, they are kept;
    null, they are removed. Answers name the stored ones in `prometheus_credentials`, never their
    values."""

    cluster = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    prometheus = serializers.JSONField(
        required=False,
        help_text="url, match (label: value), node_label, bearer_token or username and password, "
        "verify_tls, ca_file, client_cert_file, client_key_file, timeout (s).",
    )
    prometheus_credentials = serializers.SerializerMethodField()

    class Meta:
        model = ClusterTelemetry
        fields = [
            "cluster",
            "source",
            "enabled",
            "interval_seconds",
            "prometheus",
            "prometheus_credentials",
            "scraped_at",
            "cycle_seconds",
            "unavailable_since",
            "unavailable_reason",
        ]
        read_only_fields = ["scraped_at", "cycle_seconds", "unavailable_since", "unavailable_reason"]
        extra_kwargs = {"interval_seconds": {"min_value": 1.0}}

    def get_prometheus_credentials(self, telemetry: ClusterTelemetry) -> list[str]:
        return sorted(telemetry.prometheus_secrets())

    def validate_prometheus(self, value):
        if not isinstance(value, dict):
            raise serializers.ValidationError("Give an object of Prometheus settings.")
        return value

    def validate(self, attrs):
        telemetry = self.instance
        source = attrs.get("source", telemetry.source)
        if "prometheus" in attrs or (source == TelemetrySource.PROMETHEUS and not telemetry.prometheus):
            try:
                telemetry.check_prometheus(attrs.get("prometheus", {}))
            except ValueError as exc:
                raise serializers.ValidationError({"prometheus": [str(exc)]}) from None
        return attrs

    def update(self, telemetry: ClusterTelemetry, validated_data) -> ClusterTelemetry:
        if "prometheus" in validated_data:
            telemetry.set_prometheus(validated_data.pop("prometheus"))
        telemetry.mark_available()  # judged afresh by the next cycle of whatever source is set now
        return super().update(telemetry, validated_data)


class GpuSerializer(serializers.ModelSerializer):
    """One GPU of the fleet: where it is, its health and why, whether the portal drained it, its
    latest sample and the job on it."""

    node = serializers.SlugRelatedField(slug_field="name", read_only=True)
    gpu_type = serializers.SlugRelatedField(slug_field="slug", read_only=True)

    class Meta:
        model = Gpu
        fields = [
            "node",
            "index",
            "uuid",
            "model_name",
            "gpu_type",
            "health",
            "health_reason",
            "health_since",
            "drained_by_portal",
            "drain_reason",
            "drained_at",
            "sampled_at",
            "temperature_c",
            "power_w",
            "utilisation_pct",
            "memory_used_mib",
            "job",
        ]
        read_only_fields = fields


class HealthEventSerializer(serializers.ModelSerializer):
    """One event of the hardware's history: a health change of a GPU (or of a node's exporter:
    no GPU), or a drain or resume by the portal."""

    node = serializers.SlugRelatedField(slug_field="name", read_only=True)
    gpu_index = serializers.IntegerField(source="gpu.index", read_only=True, allow_null=True, default=None)

    class Meta:
        model = HealthEvent
        fields = ["id", "at", "node", "gpu_index", "gpu_uuid", "kind", "health", "reason"]
        read_only_fields = fields
