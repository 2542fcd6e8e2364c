from __future__ import annotations

from axes.helpers import get_cool_off, get_lockout_message
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.cache import patch_vary_headers
from django.views import defaults
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from .forms import ApiTokenForm
from .models import ApiToken, Cluster


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


@never_cache  # a new token is on the page
@login_required
def token_list(request: HttpRequest) -> HttpResponse:
    """Your API tokens: make one (shown once), see them, revoke them."""
    form = ApiTokenForm(request.POST or None)
    created = None
    if request.method == "POST" and form.is_valid():
        token, key = ApiToken.issue(
            request.user, name=form.cleaned_data["name"], days=form.cleaned_data["days"]
        )
        created = {"token": token, "key": key}
        form = ApiTokenForm()
    context = {"tokens": request.user.api_tokens.all(), "form": form, "created": created}
    return render(request, "factory/tokens.html", context, status=400 if form.errors else 200)


@require_POST
@login_required
def token_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    """Delete one of your tokens: it stops working at once (within seconds on other web processes).
    Another user's token is a 404."""
    token = get_object_or_404(ApiToken, pk=pk, user=request.user)
    token.delete()
    if request.htmx:
        context = {"tokens": request.user.api_tokens.all()}
        response = render(request, "factory/tokens.html#tokens", context)
        patch_vary_headers(response, ["HX-Request"])
        return response
    messages.success(request, f"Token {token.name or token.prefix + '…'} revoked.")
    return redirect("tokens")


def locked_out(request: HttpRequest, response=None, credentials=None) -> HttpResponse:
    """What django-axes answers a sign-in on the login page or the admin's that is locked out."""
    page = render(request, "registration/locked_out.html", {"message": get_lockout_message()}, status=429)
    cool_off = get_cool_off(request)
    if cool_off:
        page["Retry-After"] = str(int(cool_off.total_seconds()))
    return page
