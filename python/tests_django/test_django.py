"""The Django Tasks backend end to end: enqueue in the app process, run in emulator machines
(`python -m django flyjobs_worker`), read the result back."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time
from typing import Any, Callable

import pytest

TIMEOUT = float(os.environ.get("FLYJOBS_TEST_TIMEOUT", "120"))


def finished(result: Any, timeout: float = TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while not result.is_finished:
        if time.monotonic() > deadline:
            pytest.fail(f"task {result.id} did not finish in {timeout}s: {result.status}")
        time.sleep(0.2)
        result.refresh()
    return result


def test_the_backend_says_what_it_supports(project: str) -> None:
    from django.tasks import task_backends

    from flyjobs.django import FlyMachineBackend

    backend = task_backends["default"]
    assert isinstance(backend, FlyMachineBackend)
    assert (backend.supports_defer, backend.supports_async_task, backend.supports_get_result,
            backend.supports_priority) == (True, True, True, True)


def test_a_task_runs_in_a_machine_and_returns_a_value(project: str) -> None:
    from django.tasks import TaskResultStatus

    from shop import tasks

    result = tasks.add.enqueue(2, b=3)
    assert result.status == TaskResultStatus.READY and result.backend == "default"
    assert result.args == [2] and result.kwargs == {"b": 3}
    finished(result)
    assert result.status == TaskResultStatus.SUCCESSFUL
    value = result.return_value
    assert value["sum"] == 5 and value["worker"] == "1" and value["pid"] != os.getpid()
    assert result.attempts == 1 and result.errors == []
    assert result.started_at is not None and result.finished_at is not None
    again = tasks.add.get_result(result.id)
    assert again.return_value == value and again.task.func is tasks.add.func


def test_priority_queue_and_async_flows(project: str) -> None:
    from django.tasks import task_backends

    from shop import tasks

    sent = tasks.send.enqueue("ann@example.com")
    job = task_backends["default"].client().job(int(sent.id))
    assert job is not None
    assert job["queue"] == "mail" and job["priority"] == -10, "Django's 10 runs sooner: core priority -10"
    assert finished(sent).return_value == "sent to ann@example.com"

    async def flow() -> Any:
        r = await tasks.slow_double.aenqueue(21)
        for _ in range(int(TIMEOUT * 5)):
            r = await tasks.slow_double.aget_result(r.id)
            if r.is_finished:
                return r
            await asyncio.sleep(0.2)
        return r

    r = asyncio.run(flow())
    assert r.return_value == 42


def test_only_the_backends_queues_are_accepted(project: str) -> None:
    from django.tasks.exceptions import InvalidTask

    from shop import tasks

    with pytest.raises(InvalidTask, match="Queue 'nope' is not valid"):
        tasks.add.using(queue_name="nope")


def test_run_after_defers_the_task(project: str) -> None:
    from django.tasks import TaskResultStatus
    from django.utils import timezone

    from shop import tasks

    start = time.time()
    result = tasks.add.using(run_after=timezone.now() + dt.timedelta(seconds=4)).enqueue(1, 1)
    time.sleep(1)
    result.refresh()
    assert result.status == TaskResultStatus.READY
    finished(result)
    assert result.return_value["sum"] == 2
    assert time.time() - start >= 3.5


def test_a_failing_task_is_failed_with_its_error(project: str) -> None:
    from django.tasks import TaskResultStatus

    from shop import tasks

    result = finished(tasks.explode.enqueue("on purpose"))
    assert result.status == TaskResultStatus.FAILED
    (error,) = result.errors
    assert error.exception_class is ValueError
    assert "explode: on purpose" in error.traceback and "in explode" in error.traceback
    with pytest.raises(ValueError, match="Task failed"):
        result.return_value


def test_a_task_with_context(project: str) -> None:
    from shop import tasks

    result = finished(tasks.whoami.enqueue("ctx"))
    assert result.return_value == {"tag": "ctx", "attempt": 1, "id": result.id}


def test_unknown_results_do_not_exist(project: str) -> None:
    from django.tasks import task_backends
    from django.tasks.exceptions import TaskResultDoesNotExist

    backend = task_backends["default"]
    for bad in ("999999999", "not-a-number"):
        with pytest.raises(TaskResultDoesNotExist):
            backend.get_result(bad)
    # A plain flyjobs job in the same store is not a Django task result.
    job = backend.client().enqueue({"x": 1}, queue="default", run_at=time.time() + 3600)
    with pytest.raises(TaskResultDoesNotExist):
        backend.get_result(str(job["id"]))
    backend.client().cancel(job["id"])


def test_the_dashboard_is_served_to_staff_and_retries_a_failed_task(project: str) -> None:
    import re

    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.tasks import TaskResultStatus
    from django.test import Client

    from shop import tasks

    call_command("migrate", verbosity=0)
    failed = finished(tasks.explode.enqueue("for the dashboard"))
    assert failed.status == TaskResultStatus.FAILED
    browser = Client(HTTP_HOST="localhost")
    # not logged in: the admin's login page
    anonymous = browser.get(f"/flyjobs/jobs/{failed.id}")
    assert anonymous.status_code == 302 and "/admin/login/" in anonymous["Location"]
    staff = User.objects.create_user("ops", password="pw-for-the-test", is_staff=True)
    browser.force_login(staff)
    page = browser.get(f"/flyjobs/jobs/{failed.id}")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'href="/flyjobs/dead"' in html and "explode: for the dashboard" in html
    token = page.cookies["flyjobs_csrf"].value
    assert re.fullmatch(r"[0-9a-f]{64}", token)
    # without the dashboard's token: refused (Django's own CSRF check is the dashboard's)
    # (a browser posts the dashboard's forms urlencoded)
    form = "application/x-www-form-urlencoded"
    refused = browser.post(f"/flyjobs/jobs/{failed.id}/retry", f"_csrf={'0' * 64}", content_type=form)
    assert refused.status_code == 403
    done = browser.post(f"/flyjobs/jobs/{failed.id}/retry", f"_csrf={token}", content_type=form)
    assert done.status_code == 303 and done["Location"] == f"/flyjobs/jobs/{failed.id}"
    assert tasks.explode.get_result(failed.id).status in (
        TaskResultStatus.READY, TaskResultStatus.RUNNING, TaskResultStatus.FAILED
    )
