from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views import defaults

from .models import Cluster


@login_required
def cluster_list(request: HttpRequest) -> HttpResponse:
    """Every cluster with its pools and the health last read from its backend."""
    clusters = Cluster.objects.prefetch_related("pools__gpu_type").order_by("slug")
    return render(request, "factory/cluster_list.html", {"clusters": clusters})


def page_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    """A URL no route matches: API clients get the API's JSON error, not an HTML page."""
    if request.path_info.startswith("/api/"):
        return JsonResponse({"detail": "Not found."}, status=404)
    return defaults.page_not_found(request, exception)
