from __future__ import annotations

from django.db import models


class Health(models.TextChoices):
    HEALTHY = "healthy", "Healthy"
    WARNING = "warning", "Warning"
    FAILED = "failed", "Failed"


# Health from worst to best, for "the worse of two".
SEVERITY = {Health.HEALTHY: 0, Health.WARNING: 1, Health.FAILED: 2}
NOT_HEALTHY = (Health.WARNING, Health.FAILED)

# What the portal writes as the reason of a drain it made, and looks for before resuming: like
# LBNL NHC's "NHC:", it resumes nothing an operator drained.
DRAIN_PREFIX = "factory:"


class TelemetrySource(models.TextChoices):
    EMBEDDED = "embedded", "Embedded scraper (each node's exporter)"
    PROMETHEUS = "prometheus", "The site's Prometheus (PromQL)"
