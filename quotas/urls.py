from __future__ import annotations

from django.urls import path

from . import views

app_name = "quotas"
urlpatterns = [
    path("quotas/", views.quota_list, name="list"),
    path("quotas/<int:pk>/", views.quota_row, name="row"),
    path("dashboard/", views.my_dashboard, name="my-dashboard"),
    path("tenants/<slug:slug>/", views.tenant_dashboard, name="dashboard"),
    path("jobs/estimate/", views.job_estimate, name="job-estimate"),
]
