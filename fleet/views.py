"""Fleet pages, for platform admins: a cluster's nodes and GPUs (live), a node's last hour."""

from __future__ import annotations

from datetime import timedelta

from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db.models import Count, Q, Sum
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.utils import timezone
from django.utils.cache import patch_vary_headers

from factory.models import Cluster

from .choices import NOT_HEALTHY, Health
from .models import Gpu, GpuMinute, Node

NODES_PER_PAGE = 25
HOTTEST = 5
# GPUs whose last sample is older than this do not count towards power now.
FRESH = timedelta(minutes=2)


def _staff_cluster(request: HttpRequest, slug: str) -> Cluster:
    if not request.user.has_perm("fleet.view_node"):  # platform admins and auditors
        raise Http404  # the fleet is the platform's: others are not told it exists
    return get_object_or_404(Cluster, slug=slug)


def fleet_summary(cluster: Cluster) -> dict:
    now = timezone.now()
    gpus = Gpu.objects.filter(cluster=cluster)
    by_health = dict(gpus.values_list("health").annotate(n=Count("pk")))
    watts = gpus.filter(sampled_at__gte=now - FRESH).aggregate(w=Sum("power_w"))["w"] or 0.0
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    today_mj = (
        GpuMinute.objects.filter(gpu__cluster=cluster, minute__gte=midnight).aggregate(e=Sum("energy_mj"))[
            "e"
        ]
        or 0
    )
    hottest = list(
        gpus.filter(temperature_c__isnull=False).select_related("node").order_by("-temperature_c")[:HOTTEST]
    )
    return {
        "healthy": by_health.get(Health.HEALTHY, 0),
        "warning": by_health.get(Health.WARNING, 0),
        "failed": by_health.get(Health.FAILED, 0),
        "drained": gpus.filter(Q(drained_by_portal=True) | Q(node__drained_by_portal=True)).count(),
        "kw_now": watts / 1000,
        "kwh_today": today_mj / 3.6e9,
        "hottest": hottest,
        "total": sum(by_health.values()),
    }


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
    gpus = Gpu.objects.filter(node__in=page_nodes).select_related("job").order_by("index")
    by_node: dict[int, list[Gpu]] = {}
    for gpu in gpus:
        by_node.setdefault(gpu.node_id, []).append(gpu)
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


@login_required
def node_detail(request: HttpRequest, slug: str, name: str) -> HttpResponse:
    """One node: its GPUs now, and the last hour of temperature, power and utilisation."""
    cluster = _staff_cluster(request, slug)
    node = get_object_or_404(Node.objects.select_related("gpu_type"), cluster=cluster, name=name)
    gpus = list(node.gpus.select_related("job").order_by("index"))
    since = timezone.now() - timedelta(hours=1)
    minutes = GpuMinute.objects.filter(gpu__node=node, minute__gte=since, samples__gt=0).order_by("minute")
    series: dict[str, dict[str, list]] = {"temperature": {}, "power": {}, "utilisation": {}}
    index = {g.pk: f"GPU {g.index}" for g in gpus}
    for m in minutes.values("gpu_id", "minute", "samples", "temperature_sum", "power_sum", "utilisation_sum"):
        label, t, n = index.get(m["gpu_id"], "?"), m["minute"].timestamp() + 30, m["samples"]
        series["temperature"].setdefault(label, []).append((t, m["temperature_sum"] / n))
        series["power"].setdefault(label, []).append((t, m["power_sum"] / n))
        series["utilisation"].setdefault(label, []).append((t, m["utilisation_sum"] / n))
    charts = [
        ("Temperature", "°C", _chart(series["temperature"], since=since)),
        ("Power", "W", _chart(series["power"], since=since)),
        ("Utilisation", "%", _chart(series["utilisation"], since=since)),
    ]
    context = {"cluster": cluster, "node": node, "gpus": gpus, "charts": charts}
    return render(request, "fleet/node.html", context)
