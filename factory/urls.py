from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from django.views.generic import RedirectView

from jobs import views as job_views

from . import views

handler404 = views.page_not_found

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="jobs:list", permanent=False)),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("jobs/", include("jobs.urls")),
    path("clusters/", views.cluster_list, name="clusters"),
    path("account/tokens/", views.token_list, name="tokens"),
    path("account/tokens/<int:pk>/revoke/", views.token_revoke, name="token-revoke"),
    path("account/notifications/", job_views.notification_settings, name="notifications"),
    path("", include("quotas.urls")),
    path("billing/", include("billing.urls")),
    path("api/v1/", include("factory.api.urls")),
    path("api/v1/", include("jobs.api.urls")),
    path("api/v1/", include("quotas.api.urls")),
    path("api/v1/", include("billing.api.urls")),
    path("admin/", admin.site.urls),
]
