from __future__ import annotations

import logging

from auditlog.models import LogEntry
from axes.helpers import get_cool_off, get_lockout_message
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login, logout
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required, permission_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.db import transaction
from django.db.models import Count, Prefetch
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.cache import patch_vary_headers
from django.utils.http import url_has_allowed_host_and_scheme
from django.views import defaults
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from . import audit, hierarchy, members, sso
from .choices import JoinState, Role
from .filtersets import AuditFilterSet
from .forms import AddMemberForm, ApiTokenForm, JoinRequestForm, MoveTenantForm, NameAdminForm, TenantForm
from .models import ApiToken, Cluster, Membership, Tenant
from .roles import VIEW_AUDIT_TRAIL

log = logging.getLogger(__name__)

# Where to go after a single sign-on, kept in the session across the trip to the provider.
SESSION_SSO_NEXT = "sso_next"


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


class LoginView(auth_views.LoginView):
    """The local form (break-glass admins, the demo's users), and with single sign-on set up, the
    way to the site's identity provider above it."""

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["sso_label"] = settings.FACTORY_OIDC_LABEL if sso.enabled() else ""
        return context


def _safe_next(request: HttpRequest, candidate: str | None) -> str:
    if candidate and url_has_allowed_host_and_scheme(
        candidate, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return candidate
    return reverse(settings.LOGIN_REDIRECT_URL)


def _sso_problem(request: HttpRequest, message: str, status: int) -> HttpResponse:
    return render(request, "registration/sso_failed.html", {"message": message}, status=status)


def _provider_unavailable(request: HttpRequest, exc: Exception) -> HttpResponse:
    log.error("single sign-on: identity provider unavailable: %s", exc)
    return _sso_problem(
        request,
        "The identity provider cannot be reached just now, so single sign-on is not available. "
        "Try again in a few minutes; accounts with a local password can still log in on the login page.",
        503,
    )


@never_cache
@require_GET
def oidc_login(request: HttpRequest) -> HttpResponse:
    """Off to the identity provider to sign in."""
    if not sso.enabled():
        raise Http404("Single sign-on is not set up.")
    request.session[SESSION_SSO_NEXT] = _safe_next(request, request.GET.get("next"))
    try:
        return sso.authorize_redirect(request, request.build_absolute_uri(reverse("oidc-callback")))
    except sso.ProviderUnavailable as exc:
        return _provider_unavailable(request, exc)


@never_cache
@require_GET
def oidc_callback(request: HttpRequest) -> HttpResponse:
    """Back from the identity provider: check what it says, find or make the user, sign them in."""
    if not sso.enabled():
        raise Http404("Single sign-on is not set up.")
    try:
        claims, id_token = sso.verified_claims(request)
        user = sso.user_for(claims)
    except sso.ProviderUnavailable as exc:
        return _provider_unavailable(request, exc)
    except sso.SignInRefused as exc:
        return _sso_problem(request, str(exc), 403)
    next_url = request.session.pop(SESSION_SSO_NEXT, None) or reverse(settings.LOGIN_REDIRECT_URL)
    login(request, user, backend="django.contrib.auth.backends.ModelBackend")
    request.session[sso.SESSION_ID_TOKEN] = id_token
    return redirect(next_url)


@require_POST
def log_out(request: HttpRequest) -> HttpResponse:
    """End the portal session and, for a single sign-on, the identity provider's too (it sends
    the browser back to the login page)."""
    id_token = request.session.get(sso.SESSION_ID_TOKEN)
    logout(request)
    login_page = reverse(settings.LOGOUT_REDIRECT_URL)
    if id_token and sso.enabled():
        url = sso.logout_url(id_token, request.build_absolute_uri(login_page))
        if url:
            return redirect(url)
    return redirect(login_page)


@login_required
def tenant_members(request: HttpRequest, slug: str) -> HttpResponse:
    """A tenant's members, and its requests to join: every member sees them; its admins (and
    platform admins) add members, change roles, remove members and decide requests."""
    tenant = get_object_or_404(Tenant.objects.visible_to(request.user), slug=slug)
    manages = members.may_manage(request.user, tenant)
    add_form = AddMemberForm(request.POST if request.POST.get("action") == "add" else None)
    if request.method == "POST":
        if not manages:
            raise PermissionDenied("Only the tenant's admins change its members.")
        try:
            done = _member_action(request, tenant, add_form)
        except ValidationError as exc:
            for message in exc.messages:
                messages.error(request, message)
        else:
            if done:
                messages.success(request, done)
                return redirect("tenant-members", slug=tenant.slug)
    context = {
        "tenant": tenant,
        "manages": manages,
        "add_form": add_form,
        "roles": Role.choices,
        "memberships": tenant.memberships.select_related("user__identity").order_by("user__username"),
        "requests": tenant.join_requests.filter(state=JoinState.PENDING).select_related("user")
        if manages
        else [],
    }
    # After a POST, only a refused change gets here (a done one redirects).
    return render(request, "factory/members.html", context, status=400 if request.method == "POST" else 200)


def _member_action(request: HttpRequest, tenant: Tenant, add_form: AddMemberForm) -> str:
    """Do what the posted form asks; the message to show, or "" when the form had errors."""
    action = request.POST.get("action")
    if action == "add":
        if not add_form.is_valid():
            return ""
        membership = members.add_member(
            tenant, add_form.cleaned_data["username"], add_form.cleaned_data["role"], request.user
        )
        return f"{membership.user} added as {membership.get_role_display().lower()}."
    if action in ("role", "remove"):
        membership = get_object_or_404(
            tenant.memberships.select_related("user"), pk=request.POST.get("membership")
        )
        if action == "remove":
            members.remove_member(membership, request.user)
            return f"{membership.user} removed."
        role = request.POST.get("role")
        if role not in Role.values:
            raise ValidationError("Choose a role.")
        members.change_role(membership, role, request.user)
        return f"{membership.user} is now {Role(role).label.lower()}."
    if action in ("approve", "decline"):
        join = get_object_or_404(tenant.join_requests.select_related("user"), pk=request.POST.get("request"))
        if not members.decide(join, approve=action == "approve", by=request.user):
            raise ValidationError(f"{join.user}'s request was decided meanwhile.")
        return f"{join.user} {'added' if action == 'approve' else 'declined'}."
    raise ValidationError("Unknown action.")


@login_required
def join_tenant(request: HttpRequest) -> HttpResponse:
    """Ask to join a tenant; see what became of one's requests."""
    form = JoinRequestForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        tenant = Tenant.objects.filter(slug=form.cleaned_data["tenant"]).first()
        if tenant is None:
            form.add_error("tenant", "No tenant with that name.")
        else:
            try:
                members.request_to_join(request.user, tenant, form.cleaned_data["message"])
            except ValidationError as exc:
                for field, errors in exc.message_dict.items():
                    for error in errors:
                        form.add_error(field, error)
            else:
                messages.success(request, f"Asked to join {tenant}; its admins decide.")
                return redirect("join-tenant")
    mine = request.user.join_requests.select_related("tenant")[:50]
    return render(
        request, "factory/join.html", {"form": form, "requests": mine}, status=400 if form.errors else 200
    )


def _audit_filter(request: HttpRequest) -> AuditFilterSet:
    entries = LogEntry.objects.select_related("actor", "content_type").order_by("-timestamp", "-id")
    return AuditFilterSet(request.GET or None, queryset=entries)


@login_required
@permission_required(VIEW_AUDIT_TRAIL, raise_exception=True)  # platform admins and auditors
def audit_trail(request: HttpRequest) -> HttpResponse:
    """Every administrative change, newest first, by kind of object, object, user and time."""
    filterset = _audit_filter(request)
    valid = filterset.is_valid() if filterset.is_bound else True
    page = Paginator(filterset.qs if valid else LogEntry.objects.none(), settings.FACTORY_AUDIT_PAGE_SIZE)
    page = page.get_page(request.GET.get("page"))
    rows = [
        {
            "entry": entry,
            "type": audit.type_label(entry.content_type),
            "action": audit.ACTION_NAMES.get(entry.action, ""),
            "changes": audit.changes_of(entry),
            "via": audit.via_of(entry),
        }
        for entry in page
    ]
    query = request.GET.copy()
    query.pop("page", None)
    context = {"filter": filterset, "page": page, "rows": rows, "query": query.urlencode()}
    return render(request, "factory/audit.html", context, status=200 if valid else 400)


@login_required
@permission_required(VIEW_AUDIT_TRAIL, raise_exception=True)
def audit_export(request: HttpRequest) -> HttpResponse:
    """The changes the trail's page shows for the same filters, all of them, as CSV."""
    filterset = _audit_filter(request)
    if filterset.is_bound and not filterset.is_valid():
        return JsonResponse(filterset.errors, status=400)
    rows = audit.csv_rows(filterset.qs.iterator(chunk_size=2000))
    response = StreamingHttpResponse(rows, content_type="text/csv")
    response["Content-Disposition"] = 'attachment; filename="audit-trail.csv"'
    return response


@login_required
def tenant_tree(request: HttpRequest) -> HttpResponse:
    """Organisations, their departments and projects, as a tree: everyone sees the tenants they
    belong to or administer; platform admins create tenants, move them, name their admins and
    delete the ones nothing needs any more."""
    is_platform_admin = request.user.has_perm("factory.change_membership")
    forms = {
        "create": TenantForm(prefix="new"),
        "move": MoveTenantForm(prefix="move"),
        "admin": NameAdminForm(prefix="admin"),
    }
    if request.method == "POST":
        if not is_platform_admin:
            raise PermissionDenied("Only platform admins change the tenant tree.")
        action = request.POST.get("action")
        if action in forms:
            forms[action] = type(forms[action])(request.POST, prefix=forms[action].prefix)
        try:
            done = _tree_action(request, action, forms)
        except ValidationError as exc:
            _form_errors(forms.get(action), exc, request)
        else:
            if done:
                messages.success(request, done)
                return redirect("tenants")
    tenants = Tenant.objects.visible_to(request.user).prefetch_related(
        Prefetch(
            "memberships",
            Membership.objects.filter(role=Role.ADMIN).select_related("user").order_by("user__username"),
            to_attr="admin_memberships",
        )
    )
    context = {
        "rows": hierarchy.ordered(tenants.annotate(member_count=Count("memberships"))),
        "is_platform_admin": is_platform_admin,
        **{f"{name}_form": form for name, form in forms.items()},
    }
    return render(request, "factory/tenants.html", context, status=400 if request.method == "POST" else 200)


def _tree_action(request: HttpRequest, action: str | None, forms: dict) -> str:
    """Do what the posted form asks; the message to show, or "" when the form had errors."""
    if action == "delete":
        tenant = get_object_or_404(Tenant, slug=request.POST.get("tenant"))
        hierarchy.delete(tenant)
        return f"{tenant} deleted."
    form = forms.get(action)
    if form is None:
        raise ValidationError("Unknown action.")
    if not form.is_valid():
        return ""
    data = form.cleaned_data
    if action == "create":
        with transaction.atomic():
            hierarchy.hierarchy_lock()
            tenant = form.save()
        where = f" below {tenant.parent}" if tenant.parent else ""
        return f"{tenant} created{where}."
    if action == "move":
        hierarchy.move(data["tenant"], data["parent"])
        return (
            f"{data['tenant']} is now {'below ' + str(data['parent']) if data['parent'] else 'at the top'}."
        )
    tenant, username = data["tenant"], data["username"]
    membership = tenant.memberships.filter(user__username=username).first()
    if membership is None:
        members.add_member(tenant, username, Role.ADMIN, request.user)
    else:
        members.change_role(membership, Role.ADMIN, request.user)
    return f"{username} is an admin of {tenant}."


def _form_errors(form, exc: ValidationError, request: HttpRequest) -> None:
    """A refusal as the form's field errors where it names a field, as a message otherwise."""
    if form is not None and hasattr(exc, "error_dict"):
        for field, errors in exc.message_dict.items():
            form.add_error(field if field in form.fields else None, errors)
        return
    for message in exc.messages:
        messages.error(request, message)
