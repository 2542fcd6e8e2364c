from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from factory.models import GpuType, Tenant
from factory.months import month_of, parse_month

from . import reports
from .forms import RateCardForm
from .invoicing import close_month
from .models import RateCard, UsageRecord
from .permissions import is_finance

EXPORT_FORMATS = ("csv", "xlsx", "focus")
XLSX_CONTENT_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


def finance_only(view):
    @login_required
    def wrapped(request, *args, **kwargs):
        if not is_finance(request.user):
            raise PermissionDenied("Billing is for finance and platform admins.")
        return view(request, *args, **kwargs)

    wrapped.__name__ = view.__name__
    wrapped.__doc__ = view.__doc__
    return wrapped


@finance_only
def chargeback(request: HttpRequest) -> HttpResponse:
    try:
        month = parse_month(request.GET.get("month"))
    except ValueError as exc:
        return render(request, "billing/chargeback.html", {"error": str(exc)}, status=400)
    report = reports.chargeback(month)
    context = {
        "report": report,
        "month_value": f"{month:%Y-%m}",
        "may_close": not report.closed and month < month_of(),
        "formats": EXPORT_FORMATS,
    }
    return render(request, "billing/chargeback.html", context)


@finance_only
@require_POST
def chargeback_close(request: HttpRequest) -> HttpResponse:
    try:
        month = parse_month(request.POST.get("month"))
    except ValueError as exc:
        return HttpResponseBadRequest(str(exc))
    try:
        close_month(month, request.user)
    except ValidationError as exc:
        for message in exc.message_dict.get("month", exc.messages):
            messages.error(request, message)
    else:
        messages.success(request, f"{month:%B %Y} is closed and its invoices are issued.")
    return redirect(f"{request.path.rsplit('close/', 1)[0]}?month={month:%Y-%m}")


@finance_only
def chargeback_lines(request: HttpRequest, month: str, tenant: str, gpu_type: str) -> HttpResponse:
    """Drill-down: the ledger lines (and so the jobs) behind one line of the report."""
    try:
        first = parse_month(month)
    except ValueError as exc:
        return HttpResponseBadRequest(str(exc))
    tenant_obj = get_object_or_404(Tenant, slug=tenant)
    gpu = get_object_or_404(GpuType, slug=gpu_type)
    lines = (
        UsageRecord.objects.filter(month=first, tenant=tenant_obj, gpu_type=gpu)
        .select_related("job", "cluster", "rate_card")
        .order_by("period_start", "id")
    )
    page = Paginator(lines, 100).get_page(request.GET.get("page"))
    return render(
        request, "billing/lines.html", {"page": page, "month": first, "tenant": tenant_obj, "gpu_type": gpu}
    )


@finance_only
def chargeback_export(request: HttpRequest) -> HttpResponse:
    try:
        month = parse_month(request.GET.get("month"))
    except ValueError as exc:
        return HttpResponseBadRequest(str(exc))
    return export_response(month, request.GET.get("format", "csv"))


def export_response(month, fmt: str) -> HttpResponse:
    name = f"chargeback-{month:%Y-%m}"
    if fmt == "csv":
        response = HttpResponse(reports.report_csv(reports.chargeback(month)), content_type="text/csv")
    elif fmt == "xlsx":
        response = HttpResponse(
            reports.report_xlsx(reports.chargeback(month)), content_type=XLSX_CONTENT_TYPE
        )
    elif fmt == "focus":
        response = StreamingHttpResponse(reports.focus_csv_stream(month), content_type="text/csv")
        name = f"focus-{month:%Y-%m}"
    else:
        return HttpResponseBadRequest(f"Unknown format {fmt!r}: use one of json, csv, xlsx, focus.")
    extension = "xlsx" if fmt == "xlsx" else "csv"
    response["Content-Disposition"] = f'attachment; filename="{name}.{extension}"'
    return response


@finance_only
def rate_cards(request: HttpRequest) -> HttpResponse:
    form = RateCardForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        form.save()
        messages.success(request, "Price saved. Charges already in the ledger keep their price.")
        return redirect("billing:rate-cards")
    cards = RateCard.objects.select_related("gpu_type", "cluster")
    return render(
        request, "billing/rate_cards.html", {"form": form, "cards": cards}, status=400 if form.errors else 200
    )
