from __future__ import annotations

from collections.abc import Mapping

from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import serializers

from factory.api.serializers import ReusedFieldsMixin, SlugRelatedField, StrictFieldsMixin
from factory.models import Cluster, GpuType

from .. import arrays
from ..choices import ACTIVE_STATES, MAX_DEPENDENCIES, DependencyKind, JobState
from ..models import Job, JobArray, JobEvent
from ..submission import check_gpu_request, check_image
from ..validators import validate_command, validate_env, validate_image, validate_name, validate_secrets


class JobSerializer(ReusedFieldsMixin, serializers.Serializer):
    """A job as the API shows it. Fields are declared, not introspected from the model: this is on
    every submission's response and every list page, and ModelSerializer rebuilds its fields per use."""

    id = serializers.IntegerField(read_only=True)
    uid = serializers.UUIDField(read_only=True)
    tenant = serializers.CharField(source="tenant.slug", read_only=True)
    owner = serializers.CharField(source="owner.username", read_only=True)
    name = serializers.CharField(read_only=True)
    command = serializers.CharField(read_only=True)
    image = serializers.CharField(read_only=True)
    gpu_type = serializers.CharField(source="gpu_type.slug", read_only=True)
    gpu_count = serializers.IntegerField(
        read_only=True, help_text="All the job's GPUs: nodes × gpus_per_node."
    )
    nodes = serializers.IntegerField(read_only=True)
    gpus_per_node = serializers.IntegerField(read_only=True)
    cpus = serializers.IntegerField(read_only=True, help_text="CPUs per node.")
    memory_gb = serializers.IntegerField(read_only=True, help_text="Memory per node, GiB.")
    time_limit_minutes = serializers.IntegerField(read_only=True)
    priority = serializers.IntegerField(read_only=True)
    env = serializers.DictField(child=serializers.CharField(), read_only=True)
    secret_names = serializers.ListField(
        child=serializers.CharField(),
        read_only=True,
        help_text="Names of the job's secrets; values are never shown.",
    )
    state = serializers.ChoiceField(choices=JobState.choices, read_only=True)
    reason = serializers.CharField(read_only=True)
    cluster = serializers.CharField(source="cluster.slug", read_only=True, allow_null=True, default=None)
    external_id = serializers.CharField(read_only=True)
    ran_on = serializers.ListField(
        child=serializers.CharField(), read_only=True, help_text="The nodes the job ran on."
    )
    exit_code = serializers.IntegerField(read_only=True, allow_null=True)
    created_at = serializers.DateTimeField(read_only=True)
    admitted_at = serializers.DateTimeField(read_only=True, allow_null=True)
    submitted_at = serializers.DateTimeField(read_only=True, allow_null=True)
    started_at = serializers.DateTimeField(read_only=True, allow_null=True)
    ended_at = serializers.DateTimeField(read_only=True, allow_null=True)
    cancel_requested = serializers.SerializerMethodField()
    queue_position = serializers.IntegerField(read_only=True, allow_null=True, default=None)
    attempt = serializers.IntegerField(read_only=True)
    preempted_seconds = serializers.IntegerField(read_only=True)

    after_ok = serializers.SerializerMethodField()
    after_any = serializers.SerializerMethodField()
    array = serializers.IntegerField(
        source="array_id", read_only=True, allow_null=True, help_text="The array this job is a task of."
    )
    array_index = serializers.IntegerField(
        read_only=True, allow_null=True, help_text="Its index there (FACTORY_ARRAY_INDEX)."
    )
    requested_cluster = serializers.CharField(
        source="requested_cluster.slug",
        read_only=True,
        allow_null=True,
        default=None,
        help_text="The cluster it was asked to run on, if any.",
    )
    requested_region = serializers.CharField(
        read_only=True, help_text="The region it was asked to run in, if any."
    )

    def get_cancel_requested(self, job: Job) -> bool:
        return job.cancel_requested_at is not None

    def get_after_ok(self, job: Job) -> list[int]:
        return [d.on_id for d in job.dependencies.all() if d.kind == DependencyKind.AFTER_OK]

    def get_after_any(self, job: Job) -> list[int]:
        return [d.on_id for d in job.dependencies.all() if d.kind == DependencyKind.AFTER_ANY]


def _field_validators(name: str) -> list:
    return list(Job._meta.get_field(name).validators)


class JobCreateSerializer(StrictFieldsMixin, ReusedFieldsMixin, serializers.Serializer):
    """A job spec. The rules are the model fields' validators (shared with the form), attached here
    to declared fields: introspecting the model on every submission costs more than the rest."""

    # The tenant is resolved by the view (a tenant you do not belong to is a 404, not a 400).
    tenant = serializers.SlugField(write_only=True)
    name = serializers.CharField(validators=[validate_name])
    command = serializers.CharField(trim_whitespace=False, validators=[validate_command])
    image = serializers.CharField(required=False, allow_blank=True, default="", validators=[validate_image])
    gpu_type = SlugRelatedField(
        slug_field="slug",
        queryset=GpuType.objects.all(),
        error_messages={"does_not_exist": "Unknown GPU type {value}."},
    )
    gpu_count = serializers.IntegerField(
        required=False,
        validators=_field_validators("gpu_count"),
        help_text="GPUs of a one-node job. A job on several nodes gives nodes and gpus_per_node instead.",
    )
    nodes = serializers.IntegerField(
        required=False,
        default=1,
        validators=_field_validators("nodes"),
        help_text="Nodes the job runs on at once, one rank per node (a gang). Default 1.",
    )
    gpus_per_node = serializers.IntegerField(
        required=False,
        validators=_field_validators("gpus_per_node"),
        help_text="GPUs on each node of a job on several nodes.",
    )
    cpus = serializers.IntegerField(
        required=False, default=4, validators=_field_validators("cpus"), help_text="CPUs per node."
    )
    memory_gb = serializers.IntegerField(
        required=False,
        default=16,
        validators=_field_validators("memory_gb"),
        help_text="Memory per node, GiB.",
    )
    time_limit_minutes = serializers.IntegerField(validators=_field_validators("time_limit_minutes"))
    priority = serializers.IntegerField(required=False, default=0, validators=_field_validators("priority"))
    env = serializers.JSONField(required=False, default=dict, validators=[validate_env])
    after_ok = serializers.ListField(
        child=serializers.IntegerField(min_value=1),
        required=False,
        default=list,
        max_length=MAX_DEPENDENCIES,
        help_text="Ids of jobs of the same tenant that must succeed first (Slurm's afterok); if one "
        "ends otherwise, this job is cancelled.",
    )
    after_any = serializers.ListField(
        child=serializers.IntegerField(min_value=1),
        required=False,
        default=list,
        max_length=MAX_DEPENDENCIES,
        help_text="Ids of jobs of the same tenant that must end first, however (Slurm's afterany).",
    )
    secrets = serializers.JSONField(
        required=False,
        default=dict,
        write_only=True,
        validators=[validate_secrets],
        help_text="Name → value, delivered to the job as environment variables; never shown back.",
    )
    cluster = SlugRelatedField(
        source="requested_cluster",
        slug_field="slug",
        queryset=Cluster.objects.all(),
        required=False,
        allow_null=True,
        default=None,
        error_messages={"does_not_exist": "Unknown cluster {value}."},
        help_text="Run only on this cluster (within the tenant's regions). Default: wherever admission "
        "finds room.",
    )
    region = serializers.CharField(
        source="requested_region",
        required=False,
        allow_blank=True,
        default="",
        max_length=64,
        help_text="Run only on clusters of this region (one of the tenant's regions).",
    )
    array = serializers.CharField(
        required=False,
        allow_blank=True,
        default="",
        max_length=100_000,
        help_text="Make a task per index, in Slurm's grammar: 0-999, 1,3,5-7 or 0-15:4, with %N for at "
        "most N at once (0-999%50). Each task is a job with FACTORY_ARRAY_INDEX set. With a sweep, "
        "only the limit (%4). The answer is the array, not a job.",
    )
    sweep = serializers.ListField(
        child=serializers.JSONField(),
        required=False,
        default=None,
        allow_null=True,
        help_text="Make a task per parameter set ({NAME: value, ...}), indexed from 0; each set is "
        "added to its task's environment.",
    )

    def to_internal_value(self, data):
        # A one-node job needs gpu_count, a gang gpus_per_node: named with the other missing
        # fields, not after them.
        missing = {}
        if isinstance(data, Mapping) and "gpu_count" not in data and "gpus_per_node" not in data:
            field = "gpu_count" if str(data.get("nodes", 1)) == "1" else "gpus_per_node"
            missing = {field: [self.fields[field].error_messages["required"]]}
        try:
            value = super().to_internal_value(data)
        except serializers.ValidationError as exc:
            raise serializers.ValidationError({**missing, **exc.detail}) from None
        if missing:
            raise serializers.ValidationError(missing)
        return value

    def validate(self, attrs):
        both = sorted(set(attrs.get("env") or {}) & set(attrs.get("secrets") or {}))
        if both:
            raise serializers.ValidationError({"secrets": [f"{', '.join(both)} is also in env."]})
        try:
            fitting = check_gpu_request(attrs["gpu_type"], attrs)
            check_image(attrs["gpu_type"], fitting, attrs.get("image", ""))
            attrs["array"] = arrays.parse(attrs.get("array"), attrs.pop("sweep", None), attrs.get("env"))
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.message_dict) from None
        return attrs


class JobArraySerializer(ReusedFieldsMixin, serializers.Serializer):
    """An array or sweep: what was asked, and how many of its tasks are in each state. Its tasks are
    jobs (`jobs/?array=ID`)."""

    id = serializers.IntegerField(read_only=True)
    uid = serializers.UUIDField(read_only=True)
    tenant = serializers.CharField(source="tenant.slug", read_only=True)
    owner = serializers.CharField(source="owner.username", read_only=True)
    name = serializers.CharField(read_only=True)
    array = serializers.CharField(source="spec", read_only=True, help_text="As submitted: 0-999%50.")
    size = serializers.IntegerField(read_only=True, help_text="Its tasks.")
    max_running = serializers.IntegerField(
        read_only=True, allow_null=True, help_text="How many tasks may hold GPUs at once."
    )
    sweep = serializers.JSONField(read_only=True, help_text="A sweep's parameter sets, in index order.")
    cluster = serializers.CharField(source="cluster.slug", read_only=True, allow_null=True, default=None)
    external_id = serializers.CharField(read_only=True, help_text="The backend's id of the whole array.")
    created_at = serializers.DateTimeField(read_only=True)
    counts = serializers.SerializerMethodField(help_text="Its tasks in each state.")
    active = serializers.SerializerMethodField(help_text="Tasks not ended yet.")
    job_ids = serializers.SerializerMethodField(
        help_text="Its tasks' job ids in index order (null in the list: fetch the array for them)."
    )

    def get_counts(self, array: JobArray) -> dict[str, int]:
        return array.task_counts()

    def get_active(self, array: JobArray) -> int:
        counts = array.task_counts()
        return sum(counts.get(state, 0) for state in ACTIVE_STATES)

    def get_job_ids(self, array: JobArray) -> list[int] | None:
        return getattr(array, "job_ids", None)


class JobEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = JobEvent
        fields = ["id", "kind", "state", "message", "at"]


class LogChunkSerializer(serializers.Serializer):
    offset = serializers.IntegerField()
    next_offset = serializers.IntegerField()
    text = serializers.CharField()
    complete = serializers.BooleanField()
