"""The flyjobs web dashboard in a Django project: ``path("flyjobs/", include("flyjobs.django.urls"))``
in the project's urls.py serves it to staff users (Django admin's login) with the client of the
``default`` TASKS backend. The pages come from the core; this view only hands the request over.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from ..dashboard import request_map


# The dashboard checks its own CSRF token (a SameSite=Strict cookie and a form field) on every
# POST; Django's middleware would refuse its forms, which carry no Django token.
@csrf_exempt
def dashboard(request: HttpRequest, subpath: str = "", read_only: bool = False) -> HttpResponse:
    """Serves one dashboard page; `subpath` is the part of the URL after the include."""
    from django.tasks import task_backends

    backend: Any = task_backends["default"]
    full = request.path
    mount = full[: len(full) - len(subpath)] if subpath and full.endswith(subpath) else full
    headers = {k.lower(): v for k, v in request.headers.items()}
    answer = backend.client().dashboard(
        request_map(
            request.method or "GET",
            full,
            mount,
            request.META.get("QUERY_STRING", ""),
            headers,
            request.body,
            read_only,
        )
    )
    response = HttpResponse(answer["body"], status=answer["status"])
    for name, value in answer["headers"]:
        if name.lower() == "set-cookie":
            # HttpResponse keeps one header per name; cookies go through its cookie jar, with
            # the attributes the core gave them.
            response.cookies.load(value)
        else:
            response[name] = value
    return response
