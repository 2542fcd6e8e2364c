from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, PolymorphicProxySerializer, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.response import Response

from factory.api.schema import ErrorDetail
from factory.api.viewsets import ScopedViewSetMixin
from factory.models import Tenant

from .. import dependencies, lifecycle, submission
from ..filtersets import JobArrayFilterSet, JobFilterSet
from ..models import Job, JobArray
from ..views import read_log
from .serializers import (
    JobArraySerializer,
    JobCreateSerializer,
    JobEventSerializer,
    JobSerializer,
    LogChunkSerializer,
)

IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_EVENTS = 1000


class JobViewSet(
    ScopedViewSetMixin,
    mixins.CreateModelMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    """GPU jobs of the tenants you belong to. Submitting and cancelling answer 202: the work
    happens in the background; follow it with `events/` or by polling the job."""

    queryset = (
        Job.objects.select_related("tenant", "owner", "gpu_type", "cluster", "requested_cluster")
        .prefetch_related("dependencies")
        .with_queue_position()
    )
    serializer_class = JobSerializer
    filterset_class = JobFilterSet
    lookup_value_regex = "[0-9]+"  # so that jobs/estimate/ (quotas) is not taken for a job

    def get_serializer_class(self):
        return JobCreateSerializer if self.action == "create" else JobSerializer

    @extend_schema(
        request=JobCreateSerializer,
        responses={
            202: PolymorphicProxySerializer(
                component_name="JobOrArray",
                serializers=[JobSerializer, JobArraySerializer],
                resource_type_field_name=None,
            ),
            404: ErrorDetail,
            409: ErrorDetail,
        },
        parameters=[
            OpenApiParameter(
                IDEMPOTENCY_HEADER,
                location=OpenApiParameter.HEADER,
                required=False,
                description="A retried create with the same key returns the first job (or array).",
            )
        ],
    )
    def create(self, request, *args, **kwargs):
        """Submit a job; with `array` or `sweep`, an array of tasks (the answer is the array)."""
        tenant, spec = validated_spec(request)
        key = request.headers.get(IDEMPOTENCY_HEADER, "").strip()
        if len(key) > 255:
            raise ValidationError({IDEMPOTENCY_HEADER: ["At most 255 characters."]})
        tasks = spec.pop("array", None)
        try:
            if tasks is None:
                made, created = submission.submit(
                    tenant=tenant, owner=request.user, spec=spec, idempotency_key=key
                )
                data = JobSerializer(made).data
            else:
                made, created = submission.submit_array(
                    tenant=tenant, owner=request.user, spec=spec, tasks=tasks, idempotency_key=key
                )
                data = array_data(made)
        except submission.IdempotencyConflict:
            return Response(
                {"detail": f"{IDEMPOTENCY_HEADER} {key!r} was already used for a different request."},
                status=status.HTTP_409_CONFLICT,
            )
        headers = {"Location": made.get_absolute_url()}
        if not created:
            headers["Idempotent-Replayed"] = "true"
        return Response(data, status=status.HTTP_202_ACCEPTED, headers=headers)

    @extend_schema(request=None, responses={202: JobSerializer, 409: ErrorDetail})
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        job = self.get_object()
        if not job.may_cancel(request.user):
            raise PermissionDenied("Only the job's owner or a tenant admin can cancel it.")
        if job.is_terminal:
            return Response(
                {"detail": f"The job already ended ({job.get_state_display()})."},
                status=status.HTTP_409_CONFLICT,
            )
        lifecycle.cancel(job, request.user)
        job.refresh_from_db()
        return Response(JobSerializer(job).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        parameters=[
            OpenApiParameter("offset", int, description="Byte offset to read from (default 0)."),
            OpenApiParameter(
                "rank", int, description="Of a job on several nodes: whose log (default 0, the first node's)."
            ),
        ],
        responses=LogChunkSerializer,
    )
    @action(detail=True, methods=["get"])
    def logs(self, request, pk=None):
        job = self.get_object()
        try:
            offset = int(request.query_params.get("offset", 0))
        except ValueError:
            raise ValidationError({"offset": ["Give a whole number of bytes."]}) from None
        if offset < 0:
            raise ValidationError({"offset": ["The offset cannot be negative."]})
        rank = request.query_params.get("rank", "0")
        if not rank.isdigit() or int(rank) >= job.nodes:
            raise ValidationError({"rank": [f"Give a rank from 0 to {job.nodes - 1}."]})
        chunk = read_log(job, offset, int(rank))
        data = {
            "offset": offset,
            "next_offset": chunk.next_offset if chunk else offset,
            "text": chunk.text if chunk else "",
            "complete": chunk.complete if chunk else job.is_terminal,
        }
        return Response(data)

    @extend_schema(
        parameters=[OpenApiParameter("after", int, description="Only events with a larger id.")],
        responses=JobEventSerializer(many=True),
    )
    @action(detail=True, methods=["get"], pagination_class=None, filterset_class=None)
    def events(self, request, pk=None):
        job = self.get_object()
        try:
            after = int(request.query_params.get("after", 0))
        except ValueError:
            raise ValidationError({"after": ["Give an event id."]}) from None
        events = job.events.filter(pk__gt=after).order_by("pk")[:MAX_EVENTS]
        return Response(JobEventSerializer(events, many=True).data)


def array_data(array: JobArray) -> dict:
    """An array as the API shows it, with its tasks' ids (in index order)."""
    if getattr(array, "job_ids", None) is None:
        array.job_ids = list(array.tasks.order_by("array_index").values_list("pk", flat=True))
    return JobArraySerializer(array).data


class JobArrayViewSet(
    ScopedViewSetMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet
):
    """Arrays and sweeps of the tenants you belong to, with their tasks counted by state. Each task
    is a job (`jobs/?array=ID`); cancel one as a job, or all of them here."""

    queryset = JobArray.objects.select_related("tenant", "owner", "cluster").with_counts()
    serializer_class = JobArraySerializer
    filterset_class = JobArrayFilterSet

    def retrieve(self, request, *args, **kwargs):
        return Response(array_data(self.get_object()))

    @extend_schema(request=None, responses={202: JobArraySerializer, 409: ErrorDetail})
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        """Cancel every task of the array not ended yet (on Slurm, one scancel of the whole array)."""
        array = self.get_object()
        if not array.may_cancel(request.user):
            raise PermissionDenied("Only the array's owner or a tenant admin can cancel it.")
        if not lifecycle.cancel_array(array, request.user):
            return Response(
                {"detail": "Every task of the array has already ended."}, status=status.HTTP_409_CONFLICT
            )
        return Response(array_data(self.get_queryset().get(pk=array.pk)), status=status.HTTP_202_ACCEPTED)


def validated_spec(request) -> tuple[Tenant, dict]:
    """The request's job spec, checked as a submission checks it (field errors as a 400), and its
    tenant (another tenant's is a 404): for submitting and for estimating alike."""
    serializer = JobCreateSerializer(data=request.data)
    serializer.is_valid(raise_exception=True)
    spec = dict(serializer.validated_data)
    slug = spec.pop("tenant")
    tenant = Tenant.objects.submittable_by(request.user).filter(slug=slug).first()
    if tenant is None:
        # A tenant one sees but may not run jobs in (an auditor's) is refused; another is unknown.
        get_object_or_404(Tenant.objects.visible_to(request.user), slug=slug)
        raise PermissionDenied(f"Only members of {slug} run jobs in it.")
    try:
        submission.check_for_tenant(request.user, tenant, spec)
        dependencies.check(tenant, spec["after_ok"], spec["after_any"])
    except DjangoValidationError as exc:
        raise ValidationError(exc.message_dict) from None
    return tenant, spec
