from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from jobs import views as job_views

from . import views
from .metrics import metrics_view

handler404 = views.page_not_found

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="jobs:list", permanent=False)),
    path("login/", views.LoginView.as_view(), name="login"),
    path("logout/", views.log_out, name="logout"),
    path("oidc/login/", views.oidc_login, name="oidc-login"),
    path("oidc/callback/", views.oidc_callback, name="oidc-callback"),
    path("jobs/", include("jobs.urls")),
    path("clusters/", views.cluster_list, name="clusters"),
    path("clusters/", include("fleet.urls")),
    path("account/tokens/", views.token_list, name="tokens"),
    path("account/tokens/<int:pk>/revoke/", views.token_revoke, name="token-revoke"),
    path("account/notifications/", job_views.notification_settings, name="notifications"),
    path("account/join/", views.join_tenant, name="join-tenant"),
    path("tenants/", views.tenant_tree, name="tenants"),
    path("tenants/<slug:slug>/members/", views.tenant_members, name="tenant-members"),
    path("audit/", views.audit_trail, name="audit"),
    path("audit/export/", views.audit_export, name="audit-export"),
    path("", include("quotas.urls")),
    path("billing/", include("billing.urls")),
    path("api/v1/", include("factory.api.urls")),
    path("api/v1/", include("jobs.api.urls")),
    path("api/v1/", include("quotas.api.urls")),
    path("api/v1/", include("billing.api.urls")),
    path("api/v1/", include("platform_config.api.urls")),
    path("api/v1/", include("fleet.api.urls")),
    path("metrics", metrics_view, name="metrics"),
    path("admin/", admin.site.urls),
]
