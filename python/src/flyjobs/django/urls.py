"""``path("flyjobs/", include("flyjobs.django.urls"))``: the dashboard for staff users."""

from __future__ import annotations

from django.contrib.admin.views.decorators import staff_member_required
from django.urls import re_path

from .views import dashboard

app_name = "flyjobs"
urlpatterns = [
    re_path(r"^(?P<subpath>.*)$", staff_member_required(dashboard), name="dashboard"),
]
