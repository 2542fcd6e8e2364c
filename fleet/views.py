"""Fleet pages, for platform admins: a cluster's nodes and GPUs (live), a node's last hour."""

from __future__ import annotations

from datetime import UTC, timedelta

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.cache import cache
from django.core.paginator import Paginator
from django.db.models import Count, Q, Sum
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils import timezone
from django.utils.cache import patch_vary_headers

from factory.models import Cluster

from .choices import NOT_HEALTHY, Health
from .models import ClusterTelemetry, Gpu, GpuMinute, Node

NODES_PER_PAGE = 25
HOTTEST = 5
SUMMARY_SECONDS = 5
# GPUs whose last sample is older than this do not count towards power now.
FRESH = timedelta(minutes=2)


def _staff_cluster(request: HttpRequest, slug: str) -> Cluster:
    if not request.user.has_perm("fleet.view_node"):  # platform admins and auditors
        raise Http404  # the fleet is the platform's: others are not told it exists
    return get_object_or_404(Cluster, slug=slug)


def fleet_summary(cluster: Cluster) -> dict:
    """GPUs by health, power now, energy today, the hottest GPUs: a few aggregate queries, kept
    SUMMARY_SECONDS in the cache, since every admin's open page asks for it every few seconds.
    Whether its telemetry source answers is read afresh: a cached figure is never shown as current
    once the source stopped answering, nor a recovered one as unavailable."""
    telemetry = ClusterTelemetry.objects.filter(cluster=cluster).first()
    available = telemetry is None or telemetry.unavailable_since is None
    key = f"fleet:summary:{cluster.pk}:{int(available)}"
    summary = cache.get(key)
    if summary is None:
        summary = _summary(cluster, telemetry)
        cache.set(key, summary, SUMMARY_SECONDS)
    return {**summary, "telemetry": telemetry}


def _summary(cluster: Cluster, telemetry: ClusterTelemetry | None) -> dict:
    now = timezone.now()
    gpus = Gpu.objects.filter(cluster=cluster)
    counts = gpus.aggregate(
        total=Count("pk"),
        healthy=Count("pk", filter=Q(health=Health.HEALTHY)),
        warning=Count("pk", filter=Q(health=Health.WARNING)),
        failed=Count("pk", filter=Q(health=Health.FAILED)),
        drained=Count("pk", filter=Q(drained_by_portal=True) | Q(node__drained_by_portal=True)),
        watts=Sum("power_w", filter=Q(sampled_at__gte=now - FRESH)),
    )
    hottest = gpus.filter(temperature_c__isnull=False).order_by("-temperature_c")
    watts = counts.pop("watts") or 0.0
    return {
        **counts,
        "kw_now": watts / 1000,
        "kwh_today": energy_today_kwh(cluster, telemetry, now),
        "hottest": list(hottest.values("node__name", "index", "temperature_c")[:HOTTEST]),
        "telemetry": telemetry,
    }


def energy_today_kwh(cluster: Cluster, telemetry: ClusterTelemetry | None, now) -> float | None:
    """kWh the cluster's GPUs used since midnight UTC: the embedded scraper's count of the day, or
    Prometheus's counters (None when it cannot say)."""
    if telemetry is not None and telemetry.from_prometheus:
        from .sources.prometheus import energy_today_kwh as asked

        return asked(cluster, telemetry, now)
    if telemetry is None or telemetry.energy_day != now.astimezone(UTC).date():
        return 0.0
    return telemetry.energy_day_mj / 3.6e9


@login_required
def cluster_fleet(request: HttpRequest, slug: str) -> HttpResponse:
    """The cluster's nodes, each with its GPUs, 25 nodes (200 GPUs) a page; `?health=not_healthy` keeps the
    nodes with a GPU (or an exporter) that is not healthy; `?q=` finds nodes by name. htmx asks
    for the live part every few seconds."""
    cluster = _staff_cluster(request, slug)
    nodes = Node.objects.filter(cluster=cluster).select_related("gpu_type").order_by("name")
    health = request.GET.get("health", "")
    if health == "not_healthy":
        nodes = nodes.filter(
            Q(health__in=NOT_HEALTHY) | Q(gpus__health__in=NOT_HEALTHY) | Q(drained_by_portal=True)
        ).distinct()
    query = request.GET.get("q", "").strip()[:100]
    if query:
        nodes = nodes.filter(name__icontains=query)
    page = Paginator(nodes, NODES_PER_PAGE).get_page(request.GET.get("page"))
    page_nodes = list(page.object_list)
    by_node = gpu_rows(page_nodes)
    for node in page_nodes:
        node.gpu_list = by_node.get(node.pk, [])
    context = {
        "cluster": cluster,
        "summary": fleet_summary(cluster),
        "page": page,
        "nodes": page_nodes,
        "health": health,
        "query": query,
        "now": timezone.now(),
    }
    template = "fleet/cluster.html#live" if request.htmx else "fleet/cluster.html"
    response = render(request, template, context)
    patch_vary_headers(response, ["HX-Request"])
    return response


HEALTH_LABELS = dict(Health.choices)
GPU_ROW_FIELDS = (
    "node_id", "index", "uuid", "model_name", "health", "health_reason", "drained_by_portal",
    "temperature_c", "power_w", "utilisation_pct", "memory_used_mib", "job_id", "job__name",
)  # fmt: skip


def gpu_rows(nodes: list[Node]) -> dict[int, list[dict]]:
    """{node id: its GPUs as the cluster page shows them}, in one query, figures formatted here:
    the page shows 200 GPUs, and template filters on each cost more than the rest of the page."""
    by_node: dict[int, list[dict]] = {}
    urls: dict[int, str] = {}
    rows = Gpu.objects.filter(node__in=nodes).order_by("node_id", "index").values(*GPU_ROW_FIELDS)
    for row in rows:
        job_id = row["job_id"]
        if job_id and job_id not in urls:
            urls[job_id] = reverse("jobs:detail", args=[job_id])
        row.update(
            health_label=HEALTH_LABELS.get(row["health"], row["health"]),
            uuid_short=row["uuid"] if len(row["uuid"]) <= 16 else f"{row['uuid'][:15]}…",
            temperature=_figure(row["temperature_c"], "°C"),
            power=_figure(row["power_w"], "W"),
            utilisation=_figure(row["utilisation_pct"], "%"),
            memory=_figure(row["memory_used_mib"], "MiB"),
            job_url=urls.get(job_id, ""),
        )
        by_node.setdefault(row["node_id"], []).append(row)
    return by_node


def _figure(value: float | None, unit: str) -> str:
    return "—" if value is None else f"{value:.0f} {unit}"


def _chart(
    series: dict[str, list[tuple[float, float]]], *, width=600, height=140, since, seconds=3600
) -> dict:
    """SVG polylines for {label: [(unix time, value)]} over the last `seconds`."""
    values = [v for points in series.values() for _, v in points]
    top = max(values, default=1.0) or 1.0
    top *= 1.1
    lines = []
    colours = ["#2457c5", "#e08a00", "#1a7f37", "#8e44ad", "#c62828", "#00838f", "#6d4c41", "#546e7a"]
    start = since.timestamp()
    for i, (label, points) in enumerate(sorted(series.items())):
        coords = " ".join(
            f"{(t - start) / seconds * width:.1f},{height - v / top * height:.1f}" for t, v in points
        )
        lines.append({"label": label, "points": coords, "colour": colours[i % len(colours)]})
    return {"lines": lines, "top": top / 1.1, "width": width, "height": height}


HISTORY_SHOWN = 100  # a node's latest health events on its page


@login_required
def node_detail(request: HttpRequest, slug: str, name: str) -> HttpResponse:
    """One node: its GPUs now, the last hour of temperature, power and utilisation, and its
    hardware's history (health changes, drains, resumes)."""
    cluster = _staff_cluster(request, slug)
    node = get_object_or_404(Node.objects.select_related("gpu_type"), cluster=cluster, name=name)
    gpus = list(node.gpus.select_related("job").order_by("index"))
    now = timezone.now()
    since = now - timedelta(hours=1)
    telemetry = ClusterTelemetry.objects.filter(cluster=cluster).first()
    if telemetry is not None and telemetry.from_prometheus:
        from .sources.prometheus import node_series

        series = node_series(telemetry, node, since, now)
    else:
        series = _rollup_series(node, gpus, since)
    charts = []
    if series is not None:
        charts = [
            ("Temperature", "°C", _chart(series["temperature"], since=since)),
            ("Power", "W", _chart(series["power"], since=since)),
            ("Utilisation", "%", _chart(series["utilisation"], since=since)),
        ]
    history = node.health_events.select_related("gpu")[:HISTORY_SHOWN]
    context = {
        "cluster": cluster,
        "node": node,
        "gpus": gpus,
        "charts": charts,
        "telemetry": telemetry,
        "history": history,
        "history_shown": HISTORY_SHOWN,
        "retention_days": settings.FACTORY_HEALTH_HISTORY_DAYS,
    }
    return render(request, "fleet/node.html", context)


def _rollup_series(node: Node, gpus: list[Gpu], since) -> dict[str, dict[str, list]]:
    """The embedded scraper's minute rollups of a node's GPUs, as averages per minute."""
    minutes = GpuMinute.objects.filter(gpu__node=node, minute__gte=since, samples__gt=0).order_by("minute")
    series: dict[str, dict[str, list]] = {"temperature": {}, "power": {}, "utilisation": {}}
    index = {g.pk: f"GPU {g.index}" for g in gpus}
    for m in minutes.values("gpu_id", "minute", "samples", "temperature_sum", "power_sum", "utilisation_sum"):
        label, t, n = index.get(m["gpu_id"], "?"), m["minute"].timestamp() + 30, m["samples"]
        series["temperature"].setdefault(label, []).append((t, m["temperature_sum"] / n))
        series["power"].setdefault(label, []).append((t, m["power_sum"] / n))
        series["utilisation"].setdefault(label, []).append((t, m["utilisation_sum"] / n))
    return series
