"""`INSTALLED_APPS = [..., "flyjobs.django"]` gives `python manage.py flyjobs_worker`."""

from django.apps import AppConfig


class FlyJobsConfig(AppConfig):
    name = "flyjobs.django"
    label = "flyjobs"
    verbose_name = "flyjobs"
