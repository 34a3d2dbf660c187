"""The dashboard as an ASGI app (`flyjobs.dashboard.Dashboard`), called over the ASGI protocol
with a real client on a real store: pages under the mount path, CSRF, a retry, read-only."""

from __future__ import annotations

import asyncio
import os
import re
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

import flyjobs
from flyjobs.dashboard import Dashboard
from conftest import database_url


@pytest.fixture()
def url(tmp_path: Any) -> str:
    return database_url() or f"sqlite://{tmp_path}/q.db?mode=rwc"


def call(
    app: Dashboard, method: str, path: str, body: bytes = b"", cookie: Optional[str] = None, full_path: bool = True
) -> Tuple[int, Dict[str, str], str]:
    """One request through the ASGI interface, as uvicorn would make it for a mount at /flyjobs
    (`full_path=False`: as older Starlette did, with the mount already taken off the path)."""
    headers: List[Tuple[bytes, bytes]] = [(b"host", b"app.test")]
    if body:
        headers.append((b"content-type", b"application/x-www-form-urlencoded"))
    if cookie:
        headers.append((b"cookie", cookie.encode()))
    scope = {
        "type": "http", "method": method, "path": ("/flyjobs" if full_path else "") + path, "root_path": "/flyjobs",
        "query_string": b"", "headers": headers,
    }
    sent: List[Dict[str, Any]] = []
    chunks = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> Dict[str, Any]:
        return chunks.pop(0)

    async def send(message: Dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start, body_msg = sent
    out = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], out, body_msg["body"].decode()


@pytest.fixture()
def dead_job(url: str) -> Iterator[int]:
    queue = f"dash-{os.urandom(4).hex()}"
    with flyjobs.Client(database_url=url) as c:
        job = c.enqueue({"html": "<script>alert(1)</script>"}, queue=queue, max_attempts=1)
        worker = c.worker(queues=[queue], wait=1)

        def boom(_job: Any) -> None:
            raise ValueError("<b>bad</b>")

        worker.run(boom)
        assert c.job(job["id"])["state"] == "dead"
        yield job["id"]
        c.clear(queue)


def test_pages_render_under_the_mount_with_markup_escaped(url: str, dead_job: int) -> None:
    app = Dashboard(flyjobs.AsyncClient(database_url=url))
    status, headers, html = call(app, "GET", f"/jobs/{dead_job}")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert 'href="/flyjobs/dead"' in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>alert" not in html
    assert "<b>bad</b>" not in html
    assert "Path=/flyjobs; HttpOnly; SameSite=Strict" in headers["set-cookie"]
    assert call(app, "GET", "/nope")[0] == 404


def test_a_retry_needs_the_csrf_token(url: str, dead_job: int) -> None:
    app = Dashboard(flyjobs.AsyncClient(database_url=url))
    _, headers, _ = call(app, "GET", "/dead")
    token = re.search(r"flyjobs_csrf=([0-9a-f]+)", headers["set-cookie"]).group(1)  # type: ignore[union-attr]
    cookie = f"flyjobs_csrf={token}"
    status, _, _ = call(app, "POST", f"/jobs/{dead_job}/retry", f"_csrf={'0' * 64}".encode(), cookie)
    assert status == 403
    status, headers, _ = call(app, "POST", f"/jobs/{dead_job}/retry", f"_csrf={token}".encode(), cookie)
    assert status == 303 and headers["location"] == f"/flyjobs/jobs/{dead_job}"
    with flyjobs.Client(database_url=url) as c:
        assert c.job(dead_job)["state"] == "ready"


def test_read_only_refuses_changes(url: str, dead_job: int) -> None:
    app = Dashboard(flyjobs.AsyncClient(database_url=url), read_only=True)
    _, headers, html = call(app, "GET", "/dead")
    assert 'method="post"' not in html
    token = re.search(r"flyjobs_csrf=([0-9a-f]+)", headers["set-cookie"]).group(1)  # type: ignore[union-attr]
    status, _, _ = call(app, "POST", f"/jobs/{dead_job}/retry", f"_csrf={token}".encode(), f"flyjobs_csrf={token}")
    assert status == 403


def test_the_path_may_come_without_the_mount_and_an_oversized_body_is_refused(url: str, dead_job: int) -> None:
    app = Dashboard(flyjobs.AsyncClient(database_url=url))
    status, _, html = call(app, "GET", "/dead", full_path=False)
    assert status == 200 and 'href="/flyjobs/jobs' in html
    status, _, text = call(app, "POST", "/dead/retry_all", b"x" * (flyjobs._native.DASHBOARD_MAX_BODY + 10))
    assert status == 413, text
