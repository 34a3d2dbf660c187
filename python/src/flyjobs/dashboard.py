"""The web dashboard as an ASGI app, for FastAPI, Starlette or any ASGI server, behind the
app's own auth (as with Sidekiq::Web in Rails):

>>> from flyjobs.dashboard import Dashboard                 # doctest: +SKIP
>>> app.mount("/flyjobs", Dashboard())                      # FastAPI / Starlette
>>> app.mount("/flyjobs-ro", Dashboard(read_only=True))     # no actions

Django: ``path("flyjobs/", include("flyjobs.django.urls"))`` (staff only).

The pages are rendered by the core (the same dashboard as ``flyjobs dashboard`` and Rails'
``FlyJobs::Dashboard``); this module only hands the request over as plain data and sends the
answer back. Changes are POSTs carrying the dashboard's own CSRF token (a SameSite=Strict cookie
scoped to the mount path).
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple

from . import _native
from .client import AsyncClient

Scope = Dict[str, Any]
Receive = Callable[[], Awaitable[Dict[str, Any]]]
Send = Callable[[Dict[str, Any]], Awaitable[None]]


def request_map(
    method: str,
    path: str,
    mount: str,
    query: str,
    headers: Dict[str, str],
    body: bytes,
    read_only: bool,
) -> Dict[str, Any]:
    """The plain-data request the core's dashboard answers: `path` with or without the mount
    in front (the core takes it off), every header, and the body as read (up to one byte past
    ``_native.DASHBOARD_MAX_BODY``, so that the core answers 413 to a longer one)."""
    return {
        "method": method,
        "path": path,
        "mount": mount,
        "query": query,
        "headers": headers,
        "body": body[: _native.DASHBOARD_MAX_BODY + 1].decode("utf-8", "replace"),
        "read_only": read_only,
    }


class Dashboard:
    """An ASGI app serving the dashboard of `client` (default: the process-wide client)."""

    def __init__(self, client: Optional[AsyncClient] = None, *, read_only: bool = False) -> None:
        self._client = client
        self._read_only = read_only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            raise ValueError(f"the flyjobs dashboard serves HTTP, not {scope['type']!r}")
        body = b""
        while len(body) <= _native.DASHBOARD_MAX_BODY:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        root = scope.get("root_path", "") or ""
        path = scope.get("path", "/")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        query = scope.get("query_string", b"").decode("latin-1")
        client = self._client
        if client is None:
            from . import async_client

            client = async_client()
        answer = await client.dashboard(
            request_map(scope.get("method", "GET"), path, root, query, headers, body, self._read_only)
        )
        out: List[Tuple[bytes, bytes]] = [
            (str(k).encode("latin-1"), str(v).encode("latin-1")) for k, v in answer["headers"]
        ]
        await send({"type": "http.response.start", "status": answer["status"], "headers": out})
        await send({"type": "http.response.body", "body": answer["body"].encode("utf-8")})
