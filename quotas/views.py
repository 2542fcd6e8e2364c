from __future__ import annotations

from auditlog.models import LogEntry
from django.contrib.auth.decorators import login_required, permission_required
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.cache import patch_vary_headers

from factory import audit
from factory.hierarchy import TenantTree
from factory.models import Tenant
from factory.months import days_in, month_of
from jobs.forms import JobForm

from . import estimate
from .editing import save_audited
from .forms import BudgetForm, QuotaForm, QuotaLimitsForm
from .models import Budget, Quota
from .usage import budget_burn, usage_for

AUDIT_ROWS = 50


def _apply(form, instance, user) -> bool:
    """Validate the form, then save through the audited path; model errors land on the form."""
    if not form.is_valid():
        return False
    changes = {name: form.cleaned_data[name] for name in form.Meta.fields}
    if instance.pk:
        # A ModelForm writes the cleaned values onto its instance: start from the stored row, so
        # the audit log sees what changed.
        instance = type(instance).objects.get(pk=instance.pk)
    try:
        save_audited(instance, changes, user)
    except ValidationError as exc:
        for field, errors in exc.message_dict.items():
            form.add_error(field if field in form.fields else None, errors)
        return False
    return True


def recent_changes(count: int) -> list[dict]:
    """The latest changes to quotas and budgets, from the audit trail (with the quota history
    kept before it, which was moved into it)."""
    types = ContentType.objects.get_for_models(Quota, Budget).values()
    entries = (
        LogEntry.objects.filter(content_type__in=types)
        .select_related("actor", "content_type")
        .order_by("-timestamp", "-id")[:count]
    )
    return [
        {"entry": entry, "changes": audit.changes_of(entry), "via": audit.via_of(entry)} for entry in entries
    ]


def _require(request: HttpRequest, permission: str) -> None:
    if not request.user.has_perm(permission):
        raise PermissionDenied("Only platform admins change quotas.")


def in_tree_order(quotas) -> list[Quota]:
    """Quotas by tenant as the tenant tree goes (a department's before its projects'), then GPU type."""
    tenants = Tenant.objects.values_list("pk", "slug", "parent_id")
    tree = TenantTree({pk: parent for pk, _, parent in tenants})
    place = {pk: i for i, (pk, _) in enumerate(tree.walk({pk: slug for pk, slug, _ in tenants}))}
    return sorted(quotas, key=lambda q: (place.get(q.tenant_id, 0), q.gpu_type.slug))


@permission_required("quotas.view_quota", raise_exception=True)  # platform admins and auditors
def quota_list(request: HttpRequest) -> HttpResponse:
    quotas = in_tree_order(Quota.objects.select_related("tenant__parent", "gpu_type"))
    usage = usage_for(quotas)
    may_change = request.user.has_perm("quotas.change_quota")
    add_form = (
        QuotaForm(request.POST or None, prefix="new") if request.user.has_perm("quotas.add_quota") else None
    )
    if request.method == "POST":
        _require(request, "quotas.add_quota")
        if _apply(add_form, Quota(), request.user):
            return redirect("quotas:list")
    context = {
        "may_change": may_change,
        "rows": [(q, usage[q.pk]) for q in quotas],
        "add_form": add_form,
        "changes": recent_changes(AUDIT_ROWS),
        "audit_query": "&".join(f"type=quotas.{model._meta.model_name}" for model in (Quota, Budget)),
    }
    return render(
        request, "quotas/quota_list.html", context, status=400 if add_form and add_form.errors else 200
    )


@permission_required("quotas.view_quota", raise_exception=True)
def quota_row(request: HttpRequest, pk: int) -> HttpResponse:
    """One row of the quotas table: shown, as an inline form (?edit), or saved (POST)."""
    quota = get_object_or_404(Quota.objects.select_related("tenant__parent", "gpu_type"), pk=pk)
    if request.method == "POST" or "edit" in request.GET:
        _require(request, "quotas.change_quota")
    form = QuotaLimitsForm(request.POST or None, instance=quota, prefix=f"q{quota.pk}")
    status = 200
    if request.method == "POST":
        if _apply(form, quota, request.user):
            form = None
        else:
            quota.refresh_from_db()
            status = 400
    elif "edit" not in request.GET:
        form = None
    context = {
        "quota": quota,
        "usage": usage_for([quota])[quota.pk],
        "form": form,
        "may_change": request.user.has_perm("quotas.change_quota"),
    }
    if not request.htmx:
        return redirect("quotas:list")
    response = render(request, "quotas/quota_list.html#row", context, status=status if not form else 200)
    patch_vary_headers(response, ["HX-Request"])
    return response


@login_required
def tenant_dashboard(request: HttpRequest, slug: str) -> HttpResponse:
    tenant = get_object_or_404(Tenant.objects.visible_to(request.user), slug=slug)
    quotas = list(Quota.objects.filter(tenant=tenant).select_related("gpu_type"))
    usage = usage_for(quotas)
    budget = Budget.objects.filter(tenant=tenant).first()
    budget_form = None
    if request.user.has_perms(["quotas.add_budget", "quotas.change_budget"]):
        # Budgets and the tenant's priority ceiling are the platform's.
        budget_form = BudgetForm(request.POST or None, instance=budget, prefix="budget")
    posted = budget_form is not None and request.method == "POST"
    if posted and _apply(budget_form, budget or Budget(tenant=tenant), request.user):
        return redirect("quotas:dashboard", slug=slug)
    burn = budget_burn(tenant)
    context = {
        "tenant": tenant,
        "rows": [(q, usage[q.pk]) for q in quotas],
        "burn": burn,
        "chart": burn_chart(burn),
        "budget": budget,
        "budget_form": budget_form,
    }
    return render(request, "quotas/dashboard.html", context)


@login_required
def my_dashboard(request: HttpRequest) -> HttpResponse:
    tenant = Tenant.objects.visible_to(request.user).first()
    if tenant is None:
        return redirect("jobs:list")
    return redirect("quotas:dashboard", slug=tenant.slug)


def burn_chart(burn, width: int = 600, height: int = 160) -> dict:
    """Points of a server-rendered SVG: cumulative GPU-hours per day of the month against the budget."""
    days_in_month = days_in(burn.daily[0][0] if burn.daily else month_of())
    top = max([burn.budget or 0, *(hours for _, hours in burn.daily), 1])
    step = width / (days_in_month - 1)

    def y(value) -> float:
        return round(height - float(value) / float(top) * height, 1)

    points = " ".join(f"{round(i * step, 1)},{y(hours)}" for i, (_, hours) in enumerate(burn.daily))
    return {
        "width": width,
        "height": height,
        "points": points,
        "budget_y": y(burn.budget) if burn.budget else None,
        "top": top,
        "days": days_in_month,
    }


@login_required
def job_estimate(request: HttpRequest) -> HttpResponse:
    """The new-job form's live estimate (htmx): the form's fields in, a panel out. Nothing is
    created; a form that is not complete yet says what is missing instead."""
    form = JobForm(request.POST or None, user=request.user)
    result, problem = None, ""
    if request.method == "POST" and form.is_valid():
        try:
            result = estimate.estimate(form.cleaned_data["tenant"], request.user, form.spec())
        except ValidationError as exc:
            problem = " ".join(exc.messages)
    elif form.errors:
        problem = "Complete the form to see an estimate."
    response = render(request, "quotas/_estimate.html", {"estimate": result, "problem": problem})
    patch_vary_headers(response, ["HX-Request"])
    return response
