"""End to end through the embedded emulator: the app (this process) enqueues, the embedded
scaler boots worker machines (local processes running `python -m flyjobs worker`), the jobs run
there. The slow retry jobs are enqueued first (module fixture) and checked last, so their
backoff (15 s and more, Sidekiq's curve) overlaps the other tests."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import time
from typing import Any, Dict, Set

import pytest

import flyjobs
from conftest import Out, database_url, local_api_daemons, machine_logs, tag, wait_for_lines, wait_for_state

RETRY_TIMEOUT = 150.0


@pytest.fixture(scope="module", autouse=True)
def retry_jobs(app: Any) -> Dict[str, Any]:
    flaky_tag, doomed_tag = tag(), tag()
    return {
        "flaky_tag": flaky_tag,
        "flaky": app.flaky.enqueue(flaky_tag, 2),
        "doomed_tag": doomed_tag,
        "doomed": app.doomed.enqueue(doomed_tag),
    }


def job_ids(queue: str) -> Set[int]:
    """The ids of the queue's jobs (their states move on as other tests' jobs run)."""
    return {j["id"] for j in flyjobs.client().jobs(queue=queue, limit=10000)}


def test_a_job_runs_in_a_worker_machine(app: Any) -> None:
    t = tag()
    handle = app.echo.enqueue(t, 1, "two", [3], four={"5": None})
    assert handle.status() in ("ready", "running", "completed")
    (line,) = wait_for_lines(t)
    assert line["args"] == [1, "two", [3]]
    assert line["kwargs"] == {"four": {"5": None}}
    assert line["worker"] == "1", "the worker process marks itself FLYJOBS_WORKER=1"
    assert line["machine"], "ran inside an emulator machine"
    assert line["pid"] != os.getpid()
    job = wait_for_state(handle.id, ["completed"])
    assert job["name"] == "pyjobs:echo"
    assert job["payload"] == {"function": "pyjobs:echo", "args": [t, 1, "two", [3]], "kwargs": {"four": {"5": None}}}
    assert handle.status() == "completed"
    assert handle.job["state"] == "completed"
    assert job["queue"] == os.environ["FLYJOBS_TEST_QUEUE"]


def test_the_decorator_s_machine_size_is_the_machine_its_runs_get(app: Any) -> None:
    t = tag()
    handle = app.sized.enqueue(t)
    assert handle.job["shape"] == "shared-cpu-1x:512"
    (line,) = wait_for_lines(t)
    assert line["memory_mb"] == "512", line
    queue = os.environ["FLYJOBS_TEST_QUEUE"]
    before = job_ids(queue)
    with pytest.raises(flyjobs.ConfigError, match="huge-9x.*performance-2x"):
        app.missized.enqueue(t)
    assert job_ids(queue) == before, "nothing was written"


def test_a_nested_qualname_and_an_async_job(app: Any) -> None:
    t1, t2 = tag(), tag()
    app.Steps.nested.enqueue(t1)
    handle = app.async_echo.enqueue(t2, {"x": [1.5, True]})
    assert wait_for_lines(t1)[0]["nested"] is True
    (line,) = wait_for_lines(t2)
    assert line["value"] == {"x": [1.5, True]}
    assert line["in_loop"] is True
    assert wait_for_state(handle.id, ["completed"])["name"] == "pyjobs:async_echo"


def test_async_enqueue_from_asyncio(app: Any) -> None:
    t = tag()

    async def main() -> Any:
        h = await app.echo.aenqueue(t, "from asyncio")
        return h, await h.astatus()

    handle, state = asyncio.run(main())
    assert state in ("ready", "running", "completed")
    assert wait_for_lines(t)[0]["args"] == ["from asyncio"]
    wait_for_state(handle.id, ["completed"])


def test_scheduled_jobs_wait_for_their_time(app: Any) -> None:
    t_at, t_in = tag(), tag()
    start = time.time()
    at = app.echo.enqueue_at(dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=4), t_at, "at")
    later = app.echo.enqueue_in(dt.timedelta(seconds=4), t_in, "in")
    far = app.echo.enqueue_in(3600, tag(), "never")
    assert at.status() == "scheduled"
    assert later.status() == "scheduled"
    wait_for_lines(t_at)
    wait_for_lines(t_in)
    assert time.time() - start >= 3.5, "ran before its time"
    assert far.status() == "scheduled"
    assert flyjobs.client().cancel(far.id)["state"] == "discarded"


def test_an_unserialisable_argument_raises_type_error_and_writes_nothing(app: Any) -> None:
    queue = os.environ["FLYJOBS_TEST_QUEUE"]
    before = job_ids(queue)
    with pytest.raises(TypeError, match="argument 1 of pyjobs:echo"):
        app.echo.enqueue("t", object())
    with pytest.raises(TypeError, match="argument 'when' of pyjobs:echo"):
        app.echo.enqueue("t", when=dt.datetime.now())
    with pytest.raises(TypeError, match="argument 1 of pyjobs:echo.*round-trip"):
        app.echo.enqueue("t", (1, 2))  # would arrive as a list
    with pytest.raises(TypeError, match="argument 'm'"):
        app.echo.enqueue("t", m={1: "int key"})
    with pytest.raises(TypeError, match="argument 1"):
        app.echo.enqueue("t", float("nan"))

    async def main() -> None:
        await app.async_echo.aenqueue("t", {1, 2})

    with pytest.raises(TypeError, match="argument 1 of pyjobs:async_echo"):
        asyncio.run(main())
    assert job_ids(queue) == before, "nothing was written"


def test_a_client_used_in_a_child_after_fork(app: Any) -> None:
    parent_client = flyjobs.Client(database_url=database_url())
    parent_client.stats()  # opened and used in the parent first
    t = tag()
    before = parent_client.stats()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no scaler here, the parent's runs the job
        status = 1
        try:
            os.close(r)
            flyjobs.configure(scaler=False)
            handle = app.echo.enqueue(t, "from the child")
            # The parent's Client object, used in the child: it opens its own connection.
            seen = parent_client.job(handle.id)
            assert seen is not None and seen["id"] == handle.id
            os.write(w, str(handle.id).encode())
            status = 0
        except BaseException as e:  # noqa: BLE001
            os.write(w, f"error: {e!r}".encode())
        finally:
            os._exit(status)
    os.close(w)
    with os.fdopen(r) as f:
        said = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0, f"child failed: {said}"
    # The child dropped the parent's clients (configure() reset the process-wide one): that
    # must not end the parent's share of the local Machines API, whose daemon would then stop
    # the app's machines and exit (it checks every 250 ms).
    time.sleep(1.5)
    assert len(local_api_daemons(os.path.realpath(os.getcwd()))) == 1, "the local API outlives the child"
    job_id = int(said)
    (line,) = wait_for_lines(t)
    assert line["args"] == ["from the child"]
    wait_for_state(job_id, ["completed"])
    # The parent's client still works after the fork.
    assert isinstance(parent_client.stats(), list) and isinstance(before, list)
    parent_client.close()


def test_sigterm_mid_job_releases_the_job(app: Any) -> None:
    t = tag()
    handle = app.sleeper.enqueue(t, 120)
    (first,) = wait_for_lines(t)
    assert first["run"] == "first"
    running = wait_for_state(handle.id, ["running"])
    owner = running["lease_owner"]
    os.kill(first["pid"], signal.SIGTERM)
    # shutdown_timeout (4 s) later the worker gives the job back untouched and exits; the
    # scaler boots another machine, where it runs again (and finishes at once).
    lines = wait_for_lines(t, 2)
    assert lines[1]["run"] == "again", lines
    assert lines[1]["pid"] != first["pid"]
    job = wait_for_state(handle.id, ["completed"])
    assert job["last_error"] is None, "released, not failed"
    assert job["lost_leases"] == 0, "released by the worker, not reaped after its lease ran out"
    assert job["attempts"] == 1, "a release gives the attempt back"
    assert job["lease_owner"] != owner
    assert all(r["run"] != "first finished" for r in Out.lines(t)), "the first run was cut short"


def test_fails_twice_then_succeeds(retry_jobs: Dict[str, Any]) -> None:
    handle = retry_jobs["flaky"]
    job = wait_for_state(handle.id, ["completed", "dead"], timeout=RETRY_TIMEOUT)
    assert job["state"] == "completed", f"{job}\n{machine_logs()}"
    assert job["attempts"] == 3
    assert job["result"] == "ok", "what the function returned"
    assert job["last_error"]["class"] == "ValueError"
    assert "attempt 2 fails on purpose" in job["last_error"]["message"]
    assert any("pyjobs.py" in line and "in flaky" in line for line in job["last_error"]["backtrace"])
    (line,) = Out.lines(retry_jobs["flaky_tag"])
    assert line["attempt"] == 3


def test_dead_after_max_attempts(retry_jobs: Dict[str, Any]) -> None:
    handle = retry_jobs["doomed"]
    job = wait_for_state(handle.id, ["dead"], timeout=RETRY_TIMEOUT)
    assert job["attempts"] == 2
    assert job["max_attempts"] == 2
    assert job["last_error"]["class"] == "RuntimeError"
    assert "always fails" in job["last_error"]["message"]
    # The admin API can bring it back, or throw it away.
    assert flyjobs.client().discard(handle.id)["state"] == "discarded"
