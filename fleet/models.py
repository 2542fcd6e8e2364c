"""The GPU fleet: nodes and their GPUs as the portal sees them through each node's GPU exporter.

What is kept is bounded: the latest sample on each GPU row, one rollup row per GPU per minute
(pruned after FACTORY_TELEMETRY_RETENTION_DAYS), and one energy row per job attempt per GPU.
"""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from factory import sealing
from factory.models import Cluster, GpuType
from jobs.models import Job

from .choices import Health, TelemetrySource


class ClusterTelemetry(models.Model):
    """Where a cluster's GPU telemetry comes from and how often it is read, and when it last was.

    `embedded`: the portal scrapes each node's exporter itself. A big cluster's cycle runs as
    several tasks, a shard of its nodes each (fleet.tasks): `shards_pending` counts those not done
    yet, and the last one done says how long the whole cycle took. `prometheus`: it asks the
    site's Prometheus (PromQL over HTTP) and keeps no samples of its own; the settings are checked
    by fleet.sources.prometheus.PrometheusSettings, its secrets (bearer token, password) sealed at
    rest and never shown back."""

    cluster = models.OneToOneField(Cluster, on_delete=models.CASCADE, related_name="telemetry")
    enabled = models.BooleanField(default=True)
    interval_seconds = models.FloatField(
        null=True, blank=True, help_text="Seconds between scrapes; empty: FACTORY_TELEMETRY_INTERVAL."
    )
    source = models.CharField(
        max_length=16, choices=TelemetrySource.choices, default=TelemetrySource.EMBEDDED
    )
    prometheus = models.JSONField(
        default=dict, blank=True, help_text="The Prometheus source's settings, secrets left out."
    )
    prometheus_secrets_sealed = models.TextField(blank=True, editable=False)
    scraped_at = models.DateTimeField(
        null=True, blank=True, editable=False, help_text="Its last cycle's start."
    )
    cycle_seconds = models.FloatField(null=True, blank=True, editable=False)
    shards_pending = models.PositiveIntegerField(default=0, editable=False)
    # The cluster's GPU energy on one UTC day, summed cycle by cycle: the fleet page's "energy
    # today" without summing a day of minute rollups (8,000 GPUs × 1,440 minutes).
    energy_day = models.DateField(null=True, blank=True, editable=False)
    energy_day_mj = models.BigIntegerField(default=0, editable=False)
    unavailable_since = models.DateTimeField(
        null=True, blank=True, editable=False, help_text="The source has not answered since then."
    )
    unavailable_reason = models.CharField(max_length=300, blank=True, editable=False)

    class Meta:
        verbose_name_plural = "cluster telemetry"

    def __str__(self) -> str:
        return f"telemetry of {self.cluster}"

    @property
    def from_prometheus(self) -> bool:
        return self.source == TelemetrySource.PROMETHEUS

    def prometheus_secrets(self) -> dict[str, str]:
        return sealing.unseal(self.prometheus_secrets_sealed)

    def set_prometheus(self, data: dict) -> None:
        """Take new Prometheus settings (checked; raises ValueError naming the setting). Secrets
        are write-only: one left out keeps its stored value, one given as null is removed."""
        plain, secrets = self._prometheus_from(data)
        self.prometheus = plain
        self.prometheus_secrets_sealed = sealing.seal(secrets)

    def check_prometheus(self, data: dict) -> None:
        """Raise ValueError if `data` would not make working settings; changes nothing."""
        self._prometheus_from(data)

    def _prometheus_from(self, data: dict) -> tuple[dict, dict]:
        from .sources.prometheus import PrometheusSettings

        if not isinstance(data, dict):
            raise ValueError("Prometheus settings must be an object.")
        names = PrometheusSettings.secret_names()
        secrets = self.prometheus_secrets()
        for name in names & set(data):
            if data[name] is None:
                secrets.pop(name, None)
            else:
                secrets[name] = data[name]
        plain = {key: value for key, value in data.items() if key not in names}
        PrometheusSettings.parse({**plain, **secrets})
        return plain, secrets

    def prometheus_settings(self):
        from .sources.prometheus import PrometheusSettings

        return PrometheusSettings.parse({**(self.prometheus or {}), **self.prometheus_secrets()})

    def mark_unavailable(self, reason: str, now) -> None:
        """The source did not answer: kept from the first failure until it answers again."""
        fields = {"unavailable_reason": reason[:300]}
        if self.unavailable_since is None:
            fields["unavailable_since"] = now
        ClusterTelemetry.objects.filter(pk=self.pk).update(**fields)
        for name, value in fields.items():
            setattr(self, name, value)

    def mark_available(self) -> None:
        if self.unavailable_since is None and not self.unavailable_reason:
            return
        ClusterTelemetry.objects.filter(pk=self.pk).update(unavailable_since=None, unavailable_reason="")
        self.unavailable_since, self.unavailable_reason = None, ""

    @classmethod
    def of(cls, cluster: Cluster) -> ClusterTelemetry:
        telemetry, _ = cls.objects.get_or_create(cluster=cluster)
        return telemetry


class Node(models.Model):
    cluster = models.ForeignKey(Cluster, on_delete=models.CASCADE, related_name="nodes")
    name = models.CharField(max_length=128, help_text="The node's name in its backend (Slurm, Kubernetes).")
    gpu_type = models.ForeignKey(GpuType, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    exporter_url = models.URLField(
        max_length=300, help_text="The node's GPU exporter, e.g. http://node:9400/metrics"
    )
    instance = models.CharField(
        max_length=300,
        blank=True,
        help_text="Its exporter's `instance` label in Prometheus (a cluster read from Prometheus).",
    )
    health = models.CharField(max_length=8, choices=Health.choices, default=Health.HEALTHY)
    health_reason = models.CharField(max_length=300, blank=True)
    health_since = models.DateTimeField(default=timezone.now)
    drained_by_portal = models.BooleanField(default=False)
    drain_reason = models.CharField(max_length=300, blank=True)
    drained_at = models.DateTimeField(null=True, blank=True)
    clean_since = models.DateTimeField(null=True, blank=True, help_text="Failed, but fine again since.")
    created_at = models.DateTimeField(default=timezone.now)
    scraped_at = models.DateTimeField(null=True, blank=True, help_text="Last answer from its exporter.")
    scrape_error = models.CharField(max_length=300, blank=True)
    scrape_errors = models.PositiveIntegerField(
        default=0, help_text="Failed scrapes since the last good one."
    )

    class Meta:
        ordering = ["cluster__slug", "name"]
        constraints = [models.UniqueConstraint(fields=["cluster", "name"], name="one_node_per_name")]

    def __str__(self) -> str:
        return f"{self.cluster}/{self.name}"


class Gpu(models.Model):
    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="gpus")
    cluster = models.ForeignKey(Cluster, on_delete=models.CASCADE, related_name="+")  # for filters
    gpu_type = models.ForeignKey(GpuType, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    index = models.PositiveSmallIntegerField(help_text="The exporter's `gpu` label; the backend's slot.")
    uuid = models.CharField("UUID", max_length=64, unique=True)
    model_name = models.CharField(max_length=100, blank=True)

    health = models.CharField(max_length=8, choices=Health.choices, default=Health.HEALTHY)
    health_reason = models.CharField(max_length=300, blank=True)
    health_since = models.DateTimeField(default=timezone.now)
    clean_since = models.DateTimeField(null=True, blank=True, help_text="Failed, but fine again since.")
    hot_samples = models.PositiveSmallIntegerField(default=0, help_text="Consecutive samples over the limit.")
    last_xid = models.PositiveIntegerField(default=0)
    drained_by_portal = models.BooleanField(default=False)
    drain_reason = models.CharField(max_length=300, blank=True)
    drained_at = models.DateTimeField(null=True, blank=True)

    # The latest sample.
    sampled_at = models.DateTimeField(null=True, blank=True)
    temperature_c = models.FloatField(null=True, blank=True)
    power_w = models.FloatField(null=True, blank=True)
    utilisation_pct = models.FloatField(null=True, blank=True)
    memory_used_mib = models.FloatField(null=True, blank=True)
    energy_mj = models.BigIntegerField(
        null=True, blank=True, help_text="The exporter's counter, mJ since boot."
    )
    job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        ordering = ["node__name", "index"]
        constraints = [models.UniqueConstraint(fields=["node", "index"], name="one_gpu_per_index")]
        indexes = [models.Index(fields=["cluster", "health"], name="gpu_cluster_health")]
        verbose_name = "GPU"

    def __str__(self) -> str:
        return f"{self.node} GPU {self.index}"


class HealthEventKind(models.TextChoices):
    HEALTH = "health", "Health changed"
    DRAINED = "drained", "Drained by the portal"
    RESUMED = "resumed", "Resumed by the portal"


class HealthEvent(models.Model):
    """What happened to a GPU, or to a node's exporter (no GPU): its health moved, or the portal
    drained or resumed it. The record an operator reads before sending a card back; kept
    FACTORY_HEALTH_HISTORY_DAYS. Written by the cycle that saw the change (fleet.scrape, either
    source) and by the drains and resumes (fleet.health)."""

    cluster = models.ForeignKey(Cluster, on_delete=models.CASCADE, related_name="+")
    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="health_events")
    gpu = models.ForeignKey(
        Gpu, null=True, blank=True, on_delete=models.CASCADE, related_name="health_events"
    )
    gpu_uuid = models.CharField("GPU UUID", max_length=64, blank=True)
    kind = models.CharField(max_length=8, choices=HealthEventKind.choices)
    health = models.CharField(max_length=8, choices=Health.choices, blank=True, help_text="The new health.")
    reason = models.CharField(max_length=300, blank=True)
    at = models.DateTimeField()

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [
            models.Index(fields=["node", "-at"], name="healthevent_node_recent"),
            models.Index(fields=["at"], name="healthevent_at"),
        ]

    def __str__(self) -> str:
        what = f"GPU {self.gpu_uuid}" if self.gpu_uuid else f"node {self.node_id}"
        return f"{what}: {self.get_kind_display()} at {self.at:%Y-%m-%d %H:%M}"

    @property
    def words(self) -> str:
        """What happened, as the node page says it."""
        if self.kind == HealthEventKind.HEALTH:
            return "Healthy again" if self.health == Health.HEALTHY else self.get_health_display()
        return "Drained" if self.kind == HealthEventKind.DRAINED else "Resumed"

    @classmethod
    def of(cls, cluster_id: int, thing, kind: str, at, *, health: str = "", reason: str = "") -> HealthEvent:
        """An event of a GPU or a node (unsaved)."""
        gpu = thing if isinstance(thing, Gpu) else None
        return cls(
            cluster_id=cluster_id,
            node_id=gpu.node_id if gpu else thing.pk,
            gpu=gpu,
            gpu_uuid=gpu.uuid if gpu else "",
            kind=kind,
            health=health,
            reason=reason[:300],
            at=at,
        )


class GpuMinute(models.Model):
    """One GPU's samples in one minute, summed (averages are sum / samples)."""

    gpu = models.ForeignKey(Gpu, on_delete=models.CASCADE, related_name="minutes")
    minute = models.DateTimeField()
    samples = models.PositiveIntegerField(default=0)
    temperature_sum = models.FloatField(default=0)
    power_sum = models.FloatField(default=0)
    utilisation_sum = models.FloatField(default=0)
    memory_sum = models.FloatField(default=0)
    energy_mj = models.BigIntegerField(default=0, help_text="Energy used in this minute, mJ.")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["gpu", "minute"], name="one_rollup_per_minute")]
        indexes = [models.Index(fields=["minute"], name="gpuminute_minute")]

    def __str__(self) -> str:
        return f"{self.gpu_id} at {self.minute:%Y-%m-%d %H:%M}"


class JobGpuEnergy(models.Model):
    """One job attempt on one GPU: the energy counter when it was first and last seen there, and
    the energy measured in between (summed scrape by scrape, so a counter reset loses nothing but
    the interval it happened in); utilisation and memory sums for averages."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="gpu_energy")
    attempt = models.PositiveIntegerField()
    gpu = models.ForeignKey(Gpu, null=True, on_delete=models.SET_NULL, related_name="+")
    gpu_uuid = models.CharField(max_length=64)
    start_mj = models.BigIntegerField()
    end_mj = models.BigIntegerField()
    measured_mj = models.BigIntegerField(default=0)
    resets = models.PositiveIntegerField(default=0)
    samples = models.PositiveIntegerField(default=0)
    utilisation_sum = models.FloatField(default=0)
    memory_sum = models.FloatField(default=0)
    first_at = models.DateTimeField()
    last_at = models.DateTimeField()
    busy_at = models.DateTimeField(help_text="Last sample with utilisation at or over the idle limit.")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["job", "attempt", "gpu_uuid"], name="one_energy_row_per_gpu")
        ]
        verbose_name_plural = "job GPU energy"

    def __str__(self) -> str:
        return f"job {self.job_id}.{self.attempt} on {self.gpu_uuid}"
