from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from .models import Cluster


@login_required
def cluster_list(request: HttpRequest) -> HttpResponse:
    """Every cluster with its pools and the health last read from its backend."""
    clusters = Cluster.objects.prefetch_related("pools__gpu_type").order_by("slug")
    return render(request, "factory/cluster_list.html", {"clusters": clusters})
