from __future__ import annotations

from django import forms
from django.core.exceptions import ValidationError
from django.urls import reverse

from factory.models import Cluster, GpuType, Tenant

from . import arrays, dependencies
from .choices import MAX_TIME_LIMIT_MINUTES, MIN_TIME_LIMIT_MINUTES, NotifyEvent
from .models import Job, JobTemplate, NotificationSettings
from .submission import check_gpu_request, check_image, check_owner_identity, gang_shape
from .validators import validate_name, validate_secrets

ANYWHERE = ""


class EnvField(forms.CharField):
    """Environment variables as `NAME=value` lines."""

    widget = forms.Textarea(attrs={"rows": 3, "placeholder": "BATCH_SIZE=64\nWANDB_MODE=offline"})

    def to_python(self, value) -> dict[str, str]:
        env: dict[str, str] = {}
        for number, line in enumerate((value or "").splitlines(), start=1):
            if not line.strip():
                continue
            name, sep, val = line.partition("=")
            if not sep:
                raise ValidationError(f"Line {number}: write NAME=value.")
            name = name.strip()
            if name in env:
                raise ValidationError(f"Line {number}: {name} is set twice.")
            env[name] = val
        return env

    def prepare_value(self, value) -> str:
        if isinstance(value, dict):
            return "\n".join(f"{k}={v}" for k, v in value.items())
        return value or ""


class SecretsField(EnvField):
    """Secrets as `NAME=value` lines; what was typed is never written back into the page."""

    widget = forms.Textarea(attrs={"rows": 2, "autocomplete": "off", "placeholder": "WANDB_API_KEY=…"})

    def prepare_value(self, value) -> str:
        return ""


class JobIdsField(forms.CharField):
    """Job numbers, separated by commas or spaces ("12, 13" or "#12 #13")."""

    def to_python(self, value) -> list[int]:
        ids = []
        for word in (value or "").replace(",", " ").split():
            number = word.removeprefix("#")
            if not number.isdigit() or int(number) < 1:
                raise ValidationError(f"{word[:20]} is not a job number.")
            ids.append(int(number))
        return ids

    def prepare_value(self, value) -> str:
        return ", ".join(map(str, value)) if isinstance(value, list) else value or ""


class SweepField(forms.CharField):
    """A sweep's parameter sets, one per line: `LR=0.1 BATCH=32`."""

    widget = forms.Textarea(attrs={"rows": 3, "placeholder": "LR=0.1 BATCH=32\nLR=0.01 BATCH=64"})

    def to_python(self, value) -> list[dict[str, str]]:
        return arrays.sweep_lines(value or "")

    def prepare_value(self, value) -> str:
        return arrays.sweep_text(value) if isinstance(value, list) else value or ""


def placement_choices(tenant: Tenant | None) -> list:
    """Where a job of this tenant may be asked to run: anywhere its residency allows, one of those
    regions, or one of the clusters there that accept jobs."""
    clusters = Cluster.objects.filter(enabled=True, draining=False, pools__isnull=False).distinct()
    if tenant is not None and tenant.regions:
        clusters = clusters.filter(region__in=tenant.regions)
    clusters = list(clusters.order_by("region", "slug").values_list("slug", "region"))
    regions = sorted({region for _, region in clusters})
    anywhere = "Anywhere the tenant may run" + (
        f" ({', '.join(tenant.regions)})" if tenant and tenant.regions else ""
    )
    return [
        (ANYWHERE, anywhere),
        ("Regions", [(f"region:{region}", f"Region {region}") for region in regions]),
        ("Clusters", [(f"cluster:{slug}", f"{slug} ({region})") for slug, region in clusters]),
    ]


def placement_value(cluster: Cluster | str | None, region: str) -> str:
    if cluster:
        return f"cluster:{cluster}"
    return f"region:{region}" if region else ANYWHERE


class JobForm(forms.ModelForm):
    tenant = forms.ModelChoiceField(queryset=Tenant.objects.none(), empty_label=None)
    gpu_type = forms.ModelChoiceField(queryset=GpuType.objects.all(), empty_label=None, label="GPU type")
    placement = forms.ChoiceField(
        required=False,
        label="Cluster or region",
        help_text="Only where the tenant's data may be (its regions); by default admission picks the "
        "least loaded cluster there.",
    )
    array = forms.CharField(
        required=False,
        max_length=100_000,
        label="Array",
        help_text="Run one task per index instead of one job: 0-99, 1,3,5-7 or 0-99:2, and %10 for at most "
        "10 at once (0-99%10). Each task is a job with FACTORY_ARRAY_INDEX set.",
        widget=forms.TextInput(attrs={"placeholder": "0-99%10", "spellcheck": "false"}),
    )
    sweep = SweepField(
        required=False,
        label="Sweep",
        help_text="Or one task per line of parameters, NAME=value pairs added to its environment "
        "(indexed from 0; the Array field may then only say %N).",
    )
    env = EnvField(required=False, label="Environment variables")
    after_ok = JobIdsField(
        required=False,
        label="Run after these succeed",
        help_text="Job numbers of the same tenant; if one fails, this job is cancelled.",
    )
    after_any = JobIdsField(required=False, label="Run after these end", help_text="However they end.")
    secrets = SecretsField(
        required=False,
        label="Secrets",
        validators=[validate_secrets],
        help_text="Delivered to the job as environment variables; never shown again.",
    )

    class Meta:
        model = Job
        fields = [
            "tenant",
            "name",
            "command",
            "image",
            "gpu_type",
            "gpu_count",
            "nodes",
            "gpus_per_node",
            "cpus",
            "memory_gb",
            "time_limit_minutes",
            "priority",
            "env",
        ]
        labels = {
            "image": "Container image",
            "gpu_count": "GPU count",
            "gpus_per_node": "GPUs per node",
            "cpus": "CPUs (per node)",
            "memory_gb": "Memory (GB per node)",
            "time_limit_minutes": "Time limit (minutes)",
        }
        widgets = {
            "command": forms.Textarea(
                attrs={"rows": 6, "spellcheck": "false", "placeholder": "python train.py --epochs 3"}
            ),
            "gpu_count": forms.NumberInput(attrs={"min": 1}),
            "nodes": forms.NumberInput(attrs={"min": 1}),
            "gpus_per_node": forms.NumberInput(attrs={"min": 1}),
            "time_limit_minutes": forms.NumberInput(
                attrs={"min": MIN_TIME_LIMIT_MINUTES, "max": MAX_TIME_LIMIT_MINUTES}
            ),
        }
        help_texts = {
            "name": "Letters, digits, dot, underscore, hyphen; up to 64.",
            "image": "Needed on Kubernetes clusters, from a registry they allow, e.g. "
            "nvcr.io/nvidia/pytorch:24.05-py3.",
            "time_limit_minutes": "From 1 minute to 14 days (20160). The job is stopped when it runs out.",
            "priority": "Orders your tenant's own jobs (−100 to 100; higher first), up to the ceiling the "
            "platform sets for the tenant. Across tenants, fair share decides.",
            "gpu_count": "GPUs of a job on one node.",
            "nodes": "More than one: the job starts on all its nodes at once, one rank per node, "
            "with MASTER_ADDR, MASTER_PORT, WORLD_SIZE and NODE_RANK set.",
            "gpus_per_node": "For a job on several nodes: GPUs on each.",
        }

    def __init__(self, *args, user, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.user = user
        self.fields["tenant"].queryset = Tenant.objects.submittable_by(user)
        self.fields["placement"].choices = placement_choices(self.chosen_tenant())
        # A new tenant may have other regions: its choices replace the field's (htmx).
        self.fields["tenant"].widget.attrs.update(
            {
                "hx-get": reverse("jobs:placement"),
                "hx-target": "#id_placement",
                "hx-swap": "outerHTML",
                "hx-trigger": "change",
            }
        )
        self.fields["gpu_count"].initial = 1
        self.fields["gpu_count"].required = False
        self.fields["nodes"].initial = 1
        self.fields["nodes"].required = False
        self.fields["gpus_per_node"].required = False
        self.fields["priority"].required = False  # left empty: 0, the tenant's usual order
        self.fields["priority"].initial = 0

    def chosen_tenant(self) -> Tenant | None:
        """The tenant the form is for now: as posted, as started, else the first the user has."""
        tenants = self.fields["tenant"].queryset
        chosen = self.data.get("tenant") if self.is_bound else self.initial.get("tenant")
        if chosen and str(chosen).isdigit():
            return tenants.filter(pk=chosen).first()
        return tenants.first()

    def clean_priority(self) -> int:
        priority = self.cleaned_data.get("priority")
        return 0 if priority is None else priority

    def clean_placement(self) -> str:
        """`cluster:<slug>` or `region:<name>` as the job's requested_cluster/requested_region."""
        value = self.cleaned_data.get("placement") or ANYWHERE
        kind, _, name = value.partition(":")
        cluster = Cluster.objects.filter(slug=name).first() if kind == "cluster" else None
        if kind == "cluster" and cluster is None:
            raise ValidationError("No such cluster.")
        self.cleaned_data["requested_cluster"] = cluster
        self.cleaned_data["requested_region"] = name if kind == "region" else ""
        return value

    def clean(self):
        data = super().clean()
        both = sorted(set(data.get("env") or {}) & set(data.get("secrets") or {}))
        if both:
            self.add_error("secrets", f"{', '.join(both)} is also among the environment variables.")
        self.check_shape(data)
        if "array" in data and "sweep" in data and "env" in data:
            try:
                data["array_request"] = arrays.parse(data["array"], data["sweep"], data["env"])
            except ValidationError as exc:
                self.add_error(None, exc)
        if data.get("tenant") and "after_ok" in data and "after_any" in data:
            try:
                dependencies.check(data["tenant"], data["after_ok"], data["after_any"])
            except ValidationError as exc:
                self.add_error(None, exc)
        return data

    def check_shape(self, data: dict) -> None:
        """The job's nodes, GPUs, CPUs and memory against the clusters that could run it."""
        shape_fields = ("gpu_count", "nodes", "gpus_per_node", "cpus", "memory_gb")
        if not data.get("gpu_type") or any(name in self.errors for name in shape_fields):
            return
        try:
            # The page shows both counts: GPU count speaks for a one-node job, GPUs per node for
            # a job on several.
            if (data.get("nodes") or 1) > 1:
                data["gpu_count"] = None
            else:
                data["gpus_per_node"] = None
            data.update(gang_shape(data))
            fitting = check_gpu_request(data["gpu_type"], data, data.get("tenant"))
            if "image" in data:  # absent when the field itself refused it (too long, NUL)
                check_image(data["gpu_type"], fitting, data["image"])
            check_owner_identity(self.user, fitting)
        except ValidationError as exc:
            # The API's cluster and region are one field here.
            errors = {
                "placement" if field in ("cluster", "region") else field: messages
                for field, messages in exc.message_dict.items()
            }
            self.add_error(None, ValidationError(errors))

    def spec(self) -> dict:
        """The job spec submission takes; `array` is an ArrayRequest for an array or a sweep."""
        data = self.cleaned_data
        spec = {name: data[name] for name in self.Meta.fields if name != "tenant"}
        return {
            **spec,
            "secrets": data.get("secrets") or {},
            "after_ok": data.get("after_ok") or [],
            "after_any": data.get("after_any") or [],
            "requested_cluster": data.get("requested_cluster"),
            "requested_region": data.get("requested_region") or "",
            "array": data.get("array_request"),
        }

    # Fields a template or a rerun copies: all but the tenant (chosen apart) and the secrets
    # (never kept, never shown back).
    @classmethod
    def copied_fields(cls) -> list[str]:
        return [name for name in cls.Meta.fields if name != "tenant"]

    def template_spec(self) -> dict:
        """The cleaned spec as JSON for a template: related objects by slug."""
        spec = {name: self.cleaned_data[name] for name in self.copied_fields()}
        spec["gpu_type"] = spec["gpu_type"].slug
        if self.cleaned_data.get("placement"):
            spec["placement"] = self.cleaned_data["placement"]
        request = self.cleaned_data.get("array_request")
        return {**spec, **(request.as_spec() if request is not None else {})}

    @classmethod
    def initial_from_job(cls, job: Job) -> dict:
        """A job's spec to run again; of a task, that task alone (its index's parameters in env)."""
        initial = {name: getattr(job, name) for name in cls.copied_fields()}
        placement = placement_value(job.requested_cluster, job.requested_region)
        return {**initial, "gpu_type": job.gpu_type_id, "tenant": job.tenant_id, "placement": placement}

    @classmethod
    def initial_from_template(cls, template: JobTemplate) -> dict:
        names = {*cls.copied_fields(), "placement", "array", "sweep"}
        initial = {name: value for name, value in template.spec.items() if name in names}
        gpu_type = GpuType.objects.filter(slug=initial.pop("gpu_type", "")).first()
        return {**initial, "gpu_type": gpu_type.pk if gpu_type else None, "tenant": template.tenant_id}


class TemplateForm(forms.Form):
    """Saving the new-job form's spec as a template (a second button on that form)."""

    name = forms.CharField(max_length=64, required=False, label="Template", validators=[validate_name])
    shared = forms.BooleanField(required=False, label="Share with the tenant's members")

    def clean_name(self) -> str:
        name = self.cleaned_data["name"]
        if not name:
            raise ValidationError("Name the template.")
        return name


class NotificationSettingsForm(forms.ModelForm):
    """What a user wants to hear of, and how."""

    events = forms.MultipleChoiceField(
        choices=NotifyEvent.choices,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        label="Tell me when",
    )
    webhook_url = forms.URLField(
        required=False,
        max_length=500,
        assume_scheme="https",
        label="Webhook URL",
        help_text="An https address (Slack, Mattermost, or your own receiver); requests are signed.",
    )

    class Meta:
        model = NotificationSettings
        fields = ["events", "email", "webhook_url"]
        labels = {"email": "By e-mail"}
        help_texts = {"email": "To the address of your account."}
