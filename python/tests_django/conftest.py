"""A Django project made by `django-admin startproject`, with the flyjobs Tasks backend; its
tasks run in emulator machines (`python -m django flyjobs_worker`), on SQLite (the embedded
default, in the project directory) or PostgreSQL (FLYJOBS_TEST_STORE=postgres)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from typing import Iterator

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
os.environ.setdefault("FLYJOBS_EMULATOR_LATENCY", "none")

SETTINGS = '''

# --- added by the flyjobs test suite ---
INSTALLED_APPS += ["flyjobs.django", "shop"]
TASKS = {
    "default": {
        "BACKEND": "flyjobs.django.FlyMachineBackend",
        "QUEUES": ["default", "mail"],
        "OPTIONS": {
            "database_url": os.environ.get("FLYJOBS_TEST_DJANGO_DATABASE_URL"),
            "queues": {"*": {"wait": "3s", "concurrency": 2, "max_machines": 3}},
        },
    }
}
'''


@pytest.fixture(scope="session")
def project() -> Iterator[str]:
    root = tempfile.mkdtemp(prefix="flyjobs-django-")
    subprocess.run([sys.executable, "-m", "django", "startproject", "proj", root], check=True)
    shutil.copytree(os.path.join(HERE, "shop"), os.path.join(root, "shop"))
    settings = os.path.join(root, "proj", "settings.py")
    with open(settings) as f:
        text = f.read()
    if "import os" not in text:
        text = "import os\n" + text
    with open(settings, "w") as f:
        f.write(text + SETTINGS)
    # The dashboard, as the README tells users to include it (staff only).
    urls = os.path.join(root, "proj", "urls.py")
    with open(urls) as f:
        text = f.read()
    text = text.replace("from django.urls import path", "from django.urls import include, path")
    text = text.replace(
        "urlpatterns = [", 'urlpatterns = [\n    path("flyjobs/", include("flyjobs.django.urls")),'
    )
    with open(urls, "w") as f:
        f.write(text)
    if os.environ.get("FLYJOBS_TEST_STORE") == "postgres":
        os.environ["FLYJOBS_TEST_DJANGO_DATABASE_URL"] = os.environ["FLYJOBS_TEST_DATABASE_URL"]
    os.chdir(root)
    sys.path.insert(0, root)
    os.environ["DJANGO_SETTINGS_MODULE"] = "proj.settings"
    import django

    django.setup()
    yield root
    from django.tasks import task_backends

    task_backends["default"]._handle.close()
    if os.environ.get("FLYJOBS_KEEP_APP") != "1":
        shutil.rmtree(root, ignore_errors=True)
