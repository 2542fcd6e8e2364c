from __future__ import annotations

from django.urls import path

from . import views

app_name = "jobs"
urlpatterns = [
    path("", views.job_list, name="list"),
    path("new/", views.job_create, name="create"),
    path("new/placement/", views.placement_field, name="placement"),
    path("arrays/<int:pk>/", views.array_detail, name="array"),
    path("arrays/<int:pk>/cancel/", views.array_cancel, name="array-cancel"),
    path("templates/<int:pk>/delete/", views.template_delete, name="template-delete"),
    path("<int:pk>/", views.job_detail, name="detail"),
    path("<int:pk>/cancel/", views.job_cancel, name="cancel"),
    path("<int:pk>/log/", views.job_log, name="log"),
    path("<int:pk>/stream/", views.job_stream, name="stream"),
]
