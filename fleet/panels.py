"""What the fleet adds to other apps' pages: a job's GPU use, a cluster's fleet in brief."""

from __future__ import annotations

from django.template.loader import render_to_string

from .energy import idle_for, measure
from .rules import site_rules


def job_gpu_use(request, job) -> str:
    if not job.started_at:
        return ""
    key = (job.pk, job.attempt)
    found = measure([key])
    use, unavailable = found.uses.get(key), found.unavailable.get(key, "")
    if use is None and not unavailable:
        return ""
    rules = site_rules()
    idle = idle_for(use, limit_minutes=rules.idle_minutes) if job.state == "running" else None
    context = {
        "use": use,
        "unavailable": unavailable,
        "idle": idle,
        "idle_minutes": int(idle.total_seconds() // 60) if idle else 0,
        "idle_limit": rules.idle_utilisation_pct,
    }
    return render_to_string("fleet/_job_use.html", context, request=request)


def cluster_card(request, cluster) -> str:
    if not request.user.has_perm("fleet.view_node") or not cluster.nodes.exists():
        return ""
    from .views import fleet_summary

    return render_to_string(
        "fleet/_cluster_card.html", {"cluster": cluster, "summary": fleet_summary(cluster)}, request=request
    )
