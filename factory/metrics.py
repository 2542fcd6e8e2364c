"""The portal's own metrics at /metrics, in Prometheus' text format (prometheus_client).

Counters and histograms that processes observe (admission wait, dispatch latency, telemetry
errors) are kept in multi-process mode when PROMETHEUS_MULTIPROC_DIR is set (scripts/run sets it),
so that the figure served sums every web and worker process. Figures that are the database's
state (jobs by state, quotas, fleet health) are read when scraped, by collectors the apps register
here (apps above `factory` register; this module imports none of them). Names follow Kueue's where
they mean the same (`factory_pending_workloads`, `factory_admission_wait_time_seconds`).

Only a request with `Authorization: Bearer <FACTORY_METRICS_TOKEN>` or from an address in
FACTORY_METRICS_ALLOWED_NETWORKS is answered; anybody else gets a 404, as for a page that is not there.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import Callable, Iterable
from functools import cache

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseNotFound
from django.views.decorators.cache import never_cache
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import Metric

log = logging.getLogger(__name__)

_COLLECTORS: list[Callable[[], Iterable[Metric]]] = []


def register(collector: Callable[[], Iterable[Metric]]) -> None:
    """`collector()` yields metric families read from the database when /metrics is scraped."""
    if collector not in _COLLECTORS:
        _COLLECTORS.append(collector)


class _DatabaseCollector:
    def collect(self):
        for collector in _COLLECTORS:
            try:
                yield from collector()
            except Exception:  # one app's failure must not hide the others' figures
                log.exception("metrics collector %s failed", getattr(collector, "__name__", collector))


@cache
def _networks() -> tuple:
    return tuple(ipaddress.ip_network(n, strict=False) for n in settings.FACTORY_METRICS_ALLOWED_NETWORKS)


def may_scrape(request: HttpRequest) -> bool:
    token = settings.FACTORY_METRICS_TOKEN
    given = request.headers.get("Authorization", "")
    if token and hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        return True
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    return any(address in network for network in _networks())


def registry() -> CollectorRegistry:
    found = CollectorRegistry()
    if settings.PROMETHEUS_MULTIPROC_DIR:
        multiprocess.MultiProcessCollector(found)
    else:
        for collector in list(REGISTRY._collector_to_names):  # this process's own counters
            found.register(collector)
    found.register(_DatabaseCollector())
    return found


@never_cache
def metrics_view(request: HttpRequest) -> HttpResponse:
    if not may_scrape(request):
        return HttpResponseNotFound("Not found.\n", content_type="text/plain")
    return HttpResponse(generate_latest(registry()), content_type=CONTENT_TYPE_LATEST)
