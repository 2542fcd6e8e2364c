from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from factory.models import GpuType, Tenant
from factory.months import month_of, parse_month
from factory.querysets import administers

from . import focus, reports
from .credits import correct_line, grant_credit
from .forms import CorrectionForm, CreditForm, RateCardForm
from .invoice_pdf import render as invoice_pdf_render
from .invoicing import account_tenants, close_month, invoice_for
from .models import Invoice, MonthClose, RateCard, UsageKind, UsageRecord
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
        request,
        "billing/lines.html",
        {
            "page": page,
            "month": first,
            "tenant": tenant_obj,
            "gpu_type": gpu,
            "closed": MonthClose.objects.filter(month=first).exists(),
        },
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
    cards = RateCard.objects.select_related("gpu_type", "cluster", "billing_account")
    return render(
        request, "billing/rate_cards.html", {"form": form, "cards": cards}, status=400 if form.errors else 200
    )


def apply_errors(form, exc: ValidationError) -> None:
    """A refusal from the billing rules, shown beside the field it is about."""
    for field, messages_ in exc.message_dict.items():
        form.add_error(field if field in form.fields else None, messages_)


@finance_only
def credits(request: HttpRequest) -> HttpResponse:
    """Grant a credit; see the credits and corrections already made."""
    form = CreditForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            line = grant_credit(
                data["tenant"],
                data["month"],
                data["reason"],
                request.user,
                amount=data["amount"],
                gpu_hours=data["gpu_hours"],
                gpu_type=data["gpu_type"],
                currency=(data["currency"] or "").upper(),
            )
        except ValidationError as exc:
            apply_errors(form, exc)
        else:
            messages.success(
                request, f"Credit of {-line.amount} {line.currency} granted; billed in {line.month:%B %Y}."
            )
            return redirect("billing:credits")
    recent = (
        UsageRecord.objects.filter(kind__in=[UsageKind.CREDIT, UsageKind.CORRECTION])
        .select_related("tenant", "gpu_type", "created_by", "corrects")
        .order_by("-id")[:50]
    )
    status = 400 if form.errors else 200
    return render(request, "billing/credits.html", {"form": form, "recent": recent}, status=status)


@finance_only
def correct(request: HttpRequest, pk: int) -> HttpResponse:
    """Correct one ledger line of a closed month."""
    line = get_object_or_404(UsageRecord.objects.select_related("tenant", "gpu_type", "cluster"), pk=pk)
    form = CorrectionForm(request.POST or None, initial={"amount": line.amount})
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            fix = correct_line(
                line, data["amount"], data["reason"], request.user, gpu_hours=data["gpu_hours"]
            )
        except ValidationError as exc:
            apply_errors(form, exc)
        else:
            messages.success(
                request, f"Corrected by {fix.amount} {fix.currency}, billed in {fix.month:%B %Y}."
            )
            return redirect("billing:credits")
    status = 400 if form.errors else 200
    return render(request, "billing/correct.html", {"form": form, "line": line}, status=status)


@finance_only
def invoices(request: HttpRequest) -> HttpResponse:
    try:
        month = parse_month(request.GET.get("month"))
    except ValueError as exc:
        return HttpResponseBadRequest(str(exc))
    listed = Invoice.objects.filter(month=month).order_by("number")
    closed = MonthClose.objects.filter(month=month).exists()
    context = {"invoices": listed, "month": month, "month_value": f"{month:%Y-%m}", "closed": closed}
    return render(request, "billing/invoices.html", context)


def may_see_invoice(user, account: Tenant) -> bool:
    """Finance, and the admins of the billing account."""
    if is_finance(user):
        return True
    return administers(user, account)


def issued_invoice(request: HttpRequest, account: str, month: str):
    """The invoice named in the URL, or the response that refuses it."""
    try:
        first = parse_month(month)
    except ValueError as exc:
        return None, HttpResponseBadRequest(str(exc))
    tenant = Tenant.objects.filter(slug=account).first()
    if tenant is None or not may_see_invoice(request.user, tenant):
        raise Http404("No such invoice.")
    try:
        return invoice_for(tenant, first), None
    except ValidationError as exc:
        return None, HttpResponse(" ".join(exc.messages), status=409, content_type="text/plain")
    except Invoice.DoesNotExist:
        raise Http404(f"{tenant.slug} was billed nothing in {first:%B %Y}.") from None


@login_required
def invoice(request: HttpRequest, account: str, month: str) -> HttpResponse:
    found, refusal = issued_invoice(request, account, month)
    if refusal:
        return refusal
    return render(request, "billing/invoice.html", {"invoice": found, "lines": found.lines.all()})


@login_required
def invoice_pdf(request: HttpRequest, account: str, month: str) -> HttpResponse:
    found, refusal = issued_invoice(request, account, month)
    if refusal:
        return refusal
    response = HttpResponse(invoice_pdf_render(found), content_type="application/pdf")
    response["Content-Disposition"] = f'attachment; filename="{found.display_number}.pdf"'
    return response


@login_required
def invoice_focus(request: HttpRequest, account: str, month: str) -> HttpResponse:
    found, refusal = issued_invoice(request, account, month)
    if refusal:
        return refusal
    rows = focus.csv_stream(found.month, tenants=account_tenants(found))
    response = StreamingHttpResponse(rows, content_type="text/csv")
    response["Content-Disposition"] = f'attachment; filename="{found.display_number}-focus.csv"'
    return response
