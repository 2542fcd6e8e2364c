"""Where a cluster's GPU telemetry comes from (ClusterTelemetry.source), behind one interface: a
cycle reads the source into NodeResults, which fleet.scrape.ingest stores and judges whatever
their origin, so that pages, health rules, drains, job energy, idle warnings and /metrics are the
same for both.

- `embedded`: the portal scrapes each registered node's exporter itself (fleet.scrape);
- `prometheus`: it asks the site's Prometheus (fleet.sources.prometheus) and keeps no samples.
"""

from __future__ import annotations

from datetime import datetime

from factory.models import Cluster

from ..models import ClusterTelemetry
from ..scrape import CycleReport, scrape_cluster


def run_cycle(cluster: Cluster, *, now: datetime | None = None) -> CycleReport:
    telemetry = ClusterTelemetry.objects.filter(cluster=cluster).first()
    if telemetry is not None and telemetry.from_prometheus:
        from . import prometheus

        return prometheus.cycle(cluster, telemetry, now=now)
    return scrape_cluster(cluster, now=now)
