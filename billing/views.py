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

from . import focus, reports
from .credits import correct_line, grant_credit
from .forms import CorrectionForm, CreditForm, NewPriceForm, RateCardForm
from .invoice_pdf import render as invoice_pdf_render
from .invoicing import account_tenants, close_month, invoice_for
from .models import Invoice, MonthClose, RateCard, UsageKind, UsageRecord
from .permissions import closes_months, corrects_ledger, reads_billing, sees_bill_of, sets_prices

EXPORT_FORMATS = ("csv", "xlsx", "focus")
XLSX_CONTENT_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


def billing_page(view=None, *, writes=None):
    """Pages of every tenant's bill: for whoever reads billing (finance, auditors, platform
    admins). With `writes`, a POST also needs that check (finance's): refused with a 403."""

    def decorate(view):
        @login_required
        def wrapped(request, *args, **kwargs):
            if not reads_billing(request.user):
                raise PermissionDenied("Billing is for finance, auditors and platform admins.")
            if writes is not None and request.method == "POST" and not writes(request.user):
                raise PermissionDenied("Only finance changes billing.")
            return view(request, *args, **kwargs)

        wrapped.__name__ = view.__name__
        wrapped.__doc__ = view.__doc__
        return wrapped

    return decorate(view) if view is not None else decorate


@billing_page
def chargeback(request: HttpRequest) -> HttpResponse:
    try:
        month = parse_month(request.GET.get("month"))
    except ValueError as exc:
        return render(request, "billing/chargeback.html", {"error": str(exc)}, status=400)
    report = reports.chargeback(month)
    context = {
        "report": report,
        "month_value": f"{month:%Y-%m}",
        "may_close": not report.closed and month < month_of() and closes_months(request.user),
        "formats": EXPORT_FORMATS,
    }
    return render(request, "billing/chargeback.html", context)


@billing_page(writes=closes_months)
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


@billing_page
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


@billing_page
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


@billing_page(writes=sets_prices)
def rate_cards(request: HttpRequest) -> HttpResponse:
    """Prices: a new one, or a new price from a date for a card (?replace=ID), which then ends."""
    replacing = request.POST.get("replaces") if request.method == "POST" else request.GET.get("replace")
    replaced = None
    if replacing:
        replaced = get_object_or_404(RateCard, pk=int(replacing)) if replacing.isdigit() else None
        if replaced is None:
            raise Http404("No such price.")
        form = NewPriceForm(request.POST) if request.method == "POST" else NewPriceForm.for_card(replaced)
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            try:
                new = data["replaces"].supersede(
                    data["effective_from"], **{name: data[name] for name in RateCard.PRICES}
                )
            except ValidationError as exc:
                apply_errors(form, exc)
            else:
                messages.success(
                    request, f"New price from {new.effective_from}; the one before ends that day."
                )
                return redirect("billing:rate-cards")
    else:
        form = RateCardForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            form.save()
            messages.success(request, "Price saved. Charges already in the ledger keep their price.")
            return redirect("billing:rate-cards")
    cards = list(RateCard.objects.select_related("gpu_type", "cluster", "billing_account"))
    billed = RateCard.objects.filter(pk__in=[c.pk for c in cards]).billed_through()
    rows = [(card, billed.get(card.pk)) for card in cards]
    context = {
        "form": form,
        "replaced": replaced,
        "rows": rows,
        "may_set_prices": sets_prices(request.user),
    }
    return render(request, "billing/rate_cards.html", context, status=400 if form.errors else 200)


@billing_page(writes=sets_prices)
def rate_card(request: HttpRequest, pk: int) -> HttpResponse:
    """One price, to change while it has billed nothing (a billed one may only be ended)."""
    card = get_object_or_404(RateCard.objects.select_related("gpu_type", "cluster"), pk=pk)
    form = RateCardForm(request.POST or None, instance=card)
    if request.method == "POST" and form.is_valid():
        form.save()
        messages.success(request, "Price saved.")
        return redirect("billing:rate-cards")
    context = {
        "form": form,
        "card": card,
        "last_billed": RateCard.objects.get(pk=card.pk).last_billed_day(),
        "may_set_prices": sets_prices(request.user),
    }
    return render(request, "billing/rate_card.html", context, status=400 if form.errors else 200)


@billing_page(writes=sets_prices)
@require_POST
def rate_card_delete(request: HttpRequest, pk: int) -> HttpResponse:
    card = get_object_or_404(RateCard, pk=pk)
    if not request.user.has_perm("billing.delete_ratecard"):
        raise PermissionDenied("Only finance deletes prices.")
    try:
        card.delete()
    except ValidationError as exc:
        for message in exc.messages:
            messages.error(request, message)
    else:
        messages.success(request, f"Price {card} deleted.")
    return redirect("billing:rate-cards")


def apply_errors(form, exc: ValidationError) -> None:
    """A refusal from the billing rules, shown beside the field it is about."""
    for field, messages_ in exc.message_dict.items():
        form.add_error(field if field in form.fields else None, messages_)


@billing_page(writes=corrects_ledger)
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
    context = {"form": form, "recent": recent, "may_grant": corrects_ledger(request.user)}
    return render(request, "billing/credits.html", context, status=status)


@billing_page(writes=corrects_ledger)
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
    context = {"form": form, "line": line, "may_correct": corrects_ledger(request.user)}
    return render(request, "billing/correct.html", context, status=status)


@billing_page
def invoices(request: HttpRequest) -> HttpResponse:
    try:
        month = parse_month(request.GET.get("month"))
    except ValueError as exc:
        return HttpResponseBadRequest(str(exc))
    listed = Invoice.objects.filter(month=month).order_by("number")
    closed = MonthClose.objects.filter(month=month).exists()
    context = {"invoices": listed, "month": month, "month_value": f"{month:%Y-%m}", "closed": closed}
    return render(request, "billing/invoices.html", context)


def issued_invoice(request: HttpRequest, account: str, month: str):
    """The invoice named in the URL, or the response that refuses it."""
    try:
        first = parse_month(month)
    except ValueError as exc:
        return None, HttpResponseBadRequest(str(exc))
    tenant = Tenant.objects.filter(slug=account).first()
    if tenant is None or not sees_bill_of(request.user, tenant):
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
    return refusal or pdf_response(found)


@login_required
def invoice_focus(request: HttpRequest, account: str, month: str) -> HttpResponse:
    found, refusal = issued_invoice(request, account, month)
    return refusal or focus_response(found)


def pdf_response(invoice: Invoice) -> HttpResponse:
    """An invoice's PDF, as a download (the page and the API alike)."""
    response = HttpResponse(invoice_pdf_render(invoice), content_type="application/pdf")
    response["Content-Disposition"] = f'attachment; filename="{invoice.display_number}.pdf"'
    return response


def focus_response(invoice: Invoice) -> StreamingHttpResponse:
    """The FOCUS rows that make up an invoice, streamed as a CSV download."""
    rows = focus.csv_stream(invoice.month, tenants=account_tenants(invoice))
    response = StreamingHttpResponse(rows, content_type="text/csv")
    response["Content-Disposition"] = f'attachment; filename="{invoice.display_number}-focus.csv"'
    return response
