"""The package over the native module, without worker machines: clients (blocking and asyncio),
admin calls, errors, options, an in-process worker, the shared vectors."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any, Dict, Iterator, List

import pytest

import flyjobs
from flyjobs import _native
from conftest import database_url

VECTORS = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "vectors")


def vectors(name: str) -> Dict[str, Any]:
    with open(os.path.join(VECTORS, name)) as f:
        return json.load(f)  # type: ignore[no-any-return]


def dig(doc: Any, pointer: str) -> Any:
    for key in pointer.split("/")[1:]:
        key = key.replace("~1", "/").replace("~0", "~")
        doc = doc.get(key) if isinstance(doc, dict) else None
    return doc


@pytest.fixture()
def client(tmp_path: Any) -> Iterator[flyjobs.Client]:
    url = database_url() or f"sqlite://{tmp_path}/q.db?mode=rwc"
    with flyjobs.Client(database_url=url) as c:
        yield c


@pytest.fixture()
def queue(client: flyjobs.Client) -> Iterator[str]:
    name = f"unit-{os.urandom(4).hex()}"
    yield name
    # Leave nothing waiting for the end-to-end tests' scaler (a PostgreSQL store is shared).
    client.clear(name)


# --- shared vectors ---------------------------------------------------------------------------


def test_option_vectors() -> None:
    cases = vectors("options.json")["cases"]
    assert len(cases) >= 20
    for c in cases:
        if "expect" in c:
            got = flyjobs._resolve_config(c["options"], c["env"])
            for pointer, want in c["expect"].items():
                assert dig(got, pointer) == want, f"{c['name']}: {pointer}"
        else:
            with pytest.raises(flyjobs.FlyJobsError) as e:
                flyjobs._resolve_config(c["options"], c["env"])
            assert e.value.kind == c["error"]["kind"], c["name"]
            for needle in c["error"]["contains"]:
                assert needle in str(e.value), c["name"]


def test_error_vectors() -> None:
    doc = vectors("errors.json")
    assert [k["kind"] for k in doc["kinds"]] == _native.error_kinds()
    for k in doc["kinds"]:
        cls = getattr(flyjobs, k["class"])
        assert issubclass(cls, flyjobs.FlyJobsError)
        assert cls.kind == k["kind"]
        assert flyjobs.error_class_for(k["kind"]) is cls
        view = {"kind": k["kind"], "message": "m", "retryable": k["retryable"], "status": None,
                "request_id": None, "job_id": None, "causes": []}
        e = _native.error_for_test(json.dumps(view))
        assert type(e) is cls and e.retryable is k["retryable"]
    for c in doc["cases"]:
        v = c["view"]
        e = _native.error_for_test(json.dumps(v))
        assert isinstance(e, flyjobs.FlyJobsError)
        assert (e.kind, str(e), e.retryable, e.status, e.request_id, e.job_id, e.causes) == (
            v["kind"], v["message"], v["retryable"], v["status"], v["request_id"], v["job_id"], v["causes"])
    unknown = _native.error_for_test(json.dumps({**doc["cases"][0]["view"], "kind": "brand_new"}))
    assert type(unknown) is flyjobs.FlyJobsError and unknown.kind == "brand_new"


def test_outcome_vectors_are_what_fail_returns(client: flyjobs.Client, queue: str) -> None:
    shapes = {c["outcome"]["outcome"] for c in vectors("outcomes.json")["cases"]}
    client.enqueue({"n": 1}, queue=queue, max_attempts=2)
    w = client.worker(queues=[queue], wait=1)
    lease = w._native.slot().next(1.0)
    assert isinstance(lease, _native.Lease)
    outcome = json.loads(lease.fail(json.dumps({"class": "ValueError", "message": "x", "backtrace": []})))
    assert outcome["outcome"] == "retry" and outcome["outcome"] in shapes and outcome["at"].endswith("Z")
    w.stop(0)


def test_every_core_option_is_a_configure_keyword() -> None:
    assert flyjobs.OPTIONS == [s["name"] for s in flyjobs.option_specs()["options"]]
    assert "database_url" in flyjobs.OPTIONS and "queues" in flyjobs.OPTIONS


# --- options and errors -----------------------------------------------------------------------


def test_a_bad_option_names_itself(tmp_path: Any) -> None:
    with pytest.raises(flyjobs.ConfigError, match="max_machines must be an integer >= 1, got 0"):
        flyjobs.Client(database_url=f"sqlite://{tmp_path}/q.db?mode=rwc", max_machines=0)
    with pytest.raises(flyjobs.ConfigError, match="unknown flyjobs option databse_url"):
        flyjobs.configure(databse_url="x")
    with pytest.raises(flyjobs.ConfigError, match="pool"):
        flyjobs.configure(queues={"mail": {"pool": "sometimes"}})


def test_errors_carry_their_fields(client: flyjobs.Client) -> None:
    with pytest.raises(flyjobs.NotFoundError) as e:
        client.cancel(987654321)
    assert e.value.kind == "not_found" and e.value.retryable is False
    assert isinstance(e.value, flyjobs.FlyJobsError)


def test_a_panic_becomes_an_exception() -> None:
    with pytest.raises(flyjobs.FlyJobsError, match="internal error in flyjobs.*kaboom") as e:
        _native.panic_for_test("kaboom")
    assert e.value.kind == "internal"
    _native.panic_for_test("")  # and the runtime still works


def test_a_closed_client_says_so(tmp_path: Any) -> None:
    c = flyjobs.Client(database_url=f"sqlite://{tmp_path}/q.db?mode=rwc")
    c.close()
    c.close()
    with pytest.raises(flyjobs.ShutdownError):
        c.stats()


# --- enqueue and admin ------------------------------------------------------------------------


def test_enqueue_and_the_admin_calls(client: flyjobs.Client, queue: str) -> None:
    a = client.enqueue({"a": [1, None]}, queue=queue, name="A", priority=3)
    b = client.enqueue([1], queue=queue, run_at=time.time() + 3600, unique_key="k")
    assert a["state"] == "ready" and a["payload"] == {"a": [1, None]} and a["priority"] == 3
    assert b["state"] == "scheduled"
    assert client.enqueue([2], queue=queue, unique_key="k")["id"] == b["id"], "unique while pending"
    assert client.job(a["id"])["name"] == "A"  # type: ignore[index]
    assert client.job(10**12) is None
    assert [j["id"] for j in client.jobs(queue=queue)] == [a["id"], b["id"]]
    assert [j["id"] for j in client.jobs(queue=queue, state="scheduled")] == [b["id"]]
    assert [j["id"] for j in client.jobs(queue=queue, limit=1, after_id=a["id"])] == [b["id"]]
    stats = {s["queue"]: s for s in client.stats()}
    assert stats[queue]["ready"] == 1 and stats[queue]["scheduled"] == 1
    assert client.cancel(a["id"])["state"] == "discarded"
    with pytest.raises(flyjobs.ConflictError):
        client.cancel(a["id"])
    assert client.retry(a["id"])["state"] == "ready"
    assert client.discard(a["id"])["state"] == "discarded"
    assert client.clear(queue) == 1
    assert client.jobs(queue=queue, state="scheduled") == []
    cfg = client.config()
    assert cfg["max_machines"] == 20 and cfg["queues"]["*"]["concurrency"] == 1
    assert isinstance(client.workers(), list)


def test_enqueue_many_is_all_or_nothing(client: flyjobs.Client, queue: str) -> None:
    jobs = client.enqueue_many([{"payload": i, "queue": queue} for i in range(3)])
    assert [j["payload"] for j in jobs] == [0, 1, 2]
    with pytest.raises(flyjobs.InvalidError, match="bad queue!"):
        client.enqueue_many([{"payload": 9, "queue": queue}, {"payload": 9, "queue": "bad queue!"}])
    with pytest.raises(TypeError, match="payload"):
        client.enqueue_many([{"payload": 9, "queue": queue}, {"payload": {1, 2}, "queue": queue}])
    assert len(client.jobs(queue=queue)) == 3


def test_the_async_client(tmp_path: Any, queue: str) -> None:
    url = database_url() or f"sqlite://{tmp_path}/q.db?mode=rwc"

    async def main() -> List[Any]:
        async with flyjobs.AsyncClient(database_url=url) as c:
            jobs = await asyncio.gather(*(c.enqueue({"i": i}, queue=queue) for i in range(5)))
            many = await c.enqueue_many([{"payload": "x", "queue": queue}])
            got = await c.job(jobs[0]["id"])
            listed = await c.jobs(queue=queue)
            with pytest.raises(flyjobs.NotFoundError):
                await c.cancel(10**12)
            cleared = await c.clear(queue)
            return [jobs, many, got, listed, cleared]

    jobs, many, got, listed, cleared = asyncio.run(main())
    assert sorted(j["payload"]["i"] for j in jobs) == [0, 1, 2, 3, 4]
    assert many[0]["payload"] == "x" and got["id"] == jobs[0]["id"]
    assert len(listed) == 6 and cleared == 6


def test_a_bad_option_in_the_async_client() -> None:
    async def main() -> None:
        await flyjobs.AsyncClient(max_machines="many").open()

    with pytest.raises(flyjobs.ConfigError, match="max_machines"):
        asyncio.run(main())


# --- an in-process worker ----------------------------------------------------------------------


def test_an_in_process_worker_runs_completes_and_fails(client: flyjobs.Client, queue: str) -> None:
    ok = client.enqueue({"n": 1}, queue=queue)
    bad = client.enqueue({"n": 2}, queue=queue, max_attempts=1)
    seen: List[Any] = []
    failures: List[Any] = []

    def perform(job: flyjobs.Job) -> None:
        seen.append((job.id, job.queue, job.attempts, job.payload))
        if job.payload["n"] == 2:
            raise KeyError("two")
        return {"returned": job.payload["n"], "list": [1.5, None]}

    w = client.worker(queues=[queue], concurrency=2, wait=1)
    assert w.concurrency == 2 and w.shutdown_timeout == 4.0
    w.run(perform, on_failure=lambda job, e, outcome: failures.append((job.id, type(e), outcome)))
    w.stop()
    assert sorted(s[0] for s in seen) == [ok["id"], bad["id"]]
    assert failures == [(bad["id"], KeyError, {"outcome": "dead"})]
    done = client.job(ok["id"])
    assert done is not None and done["state"] == "completed"
    assert done["result"] == {"returned": 1, "list": [1.5, None]}, "the return value is kept"
    dead = client.job(bad["id"])
    assert dead is not None and dead["state"] == "dead"
    assert dead["last_error"]["class"] == "KeyError" and dead["last_error"]["message"] == "'two'"
    assert "in perform" in dead["last_error"]["backtrace"][0], "innermost frame first"
    attempts = client.attempts(bad["id"])
    assert [(a["attempt"], a["outcome"], a["error"]["class"]) for a in attempts] == [(1, "dead", "KeyError")]
    assert client.attempts(ok["id"]) == [], "a success adds no failed run"


def test_ctrl_c_reaches_python_while_a_worker_waits(tmp_path: Any, queue: str) -> None:
    """A worker waiting for jobs (in native code, GIL released) is interrupted by SIGINT
    within a poll slice, quiets and exits cleanly."""
    url = database_url() or f"sqlite://{tmp_path}/q.db?mode=rwc"
    code = (
        # Python's own SIGINT handler, as a program run from a terminal has it. Started from a
        # background job of a non-interactive shell (`scripts/test.sh ... &`, CI runners), this
        # process would inherit SIGINT *ignored*, Python would keep it ignored, and no Ctrl-C
        # could ever arrive: the cause of this test's time-outs in full runs.
        "import signal; signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "import flyjobs, sys, time\n"
        f"c = flyjobs.Client(database_url={url!r})\n"
        f"w = c.worker(queues=[{queue!r}], wait='forever')\n"
        "try:\n"
        "    slot = w._native.slot()\n"
        "    said = False\n"
        "    while slot.next(1.0) is False:\n"
        # Said once the worker waits inside the try: the signal cannot land before it.
        "        if not said:\n"
        "            print('waiting', flush=True)\n"
        "            said = True\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', flush=True)\n"
        "    w.stop(0)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "waiting"
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=30)
    assert "interrupted" in out and p.returncode == 0


def test_worker_cli_usage_on_bad_settings(tmp_path: Any) -> None:
    env = {**os.environ, "FLYJOBS_DATABASE_URL": f"sqlite://{tmp_path}/q.db?mode=rwc"}
    p = subprocess.run([sys.executable, "-m", "flyjobs", "worker", "--pool", "sometimes"],
                       capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=60)
    assert p.returncode == 2, p.stderr
    assert "pool" in p.stderr and "usage:" in p.stderr and "Traceback" not in p.stderr


def test_logs_reach_python_logging(tmp_path: Any, caplog: Any) -> None:
    import logging

    from flyjobs import logs

    caplog.set_level(logging.INFO, logger="flyjobs")
    logs.start()
    logs.drain(0.0)
    with flyjobs.Client(database_url=f"sqlite://{tmp_path}/q.db?mode=rwc") as c:
        w = c.worker(queues=["logs"], wait=1)
        w.quiet()
        w.stop(0)
    deadline = time.time() + 10
    while time.time() < deadline and not any("quiet" in r.getMessage() for r in caplog.records):
        time.sleep(0.1)
    assert any(r.name == "flyjobs" and "quiet" in r.getMessage() for r in caplog.records)
