"""Test set-up: a temp app directory (the embedded emulator runs worker machines there, as
`python -m flyjobs worker --import pyjobs`), on SQLite (the embedded default: flyjobs.sqlite3 in
that directory) or PostgreSQL (FLYJOBS_TEST_STORE=postgres, FLYJOBS_TEST_DATABASE_URL)."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import urllib.request
import uuid
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
STORE = os.environ.get("FLYJOBS_TEST_STORE", "sqlite")
TIMEOUT = float(os.environ.get("FLYJOBS_TEST_TIMEOUT", "120"))

os.environ.setdefault("FLYJOBS_EMULATOR_LATENCY", "none")
# One queue per run: a PostgreSQL store may hold other suites' jobs.
os.environ.setdefault("FLYJOBS_TEST_QUEUE", f"py-{uuid.uuid4().hex[:8]}")


def database_url() -> Optional[str]:
    if STORE == "postgres":
        url = os.environ.get("FLYJOBS_TEST_DATABASE_URL")
        if not url:
            raise RuntimeError("FLYJOBS_TEST_STORE=postgres needs FLYJOBS_TEST_DATABASE_URL (scripts/with-postgres.sh)")
        return url
    return None  # the embedded default: flyjobs.sqlite3 in the app directory


@pytest.fixture(scope="session")
def app_dir() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="flyjobs-pyapp-")
    shutil.copy(os.path.join(HERE, "app", "pyjobs.py"), d)
    old = os.getcwd()
    os.chdir(d)
    sys.path.insert(0, d)
    yield d
    os.chdir(old)
    if os.environ.get("FLYJOBS_KEEP_APP") != "1":
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def app(app_dir: str) -> Iterator[Any]:
    """The app process: flyjobs configured, its jobs module imported, the scaler running."""
    import flyjobs
    import pyjobs  # noqa: F401 - registers the jobs

    flyjobs.configure(
        database_url=database_url(),
        # Short idle waits so machines leave soon after the test; two jobs per machine.
        queues={"*": {"wait": "3s", "concurrency": 2, "max_machines": 4}},
    )
    yield pyjobs
    flyjobs.reset()


class Out:
    """What jobs wrote to out.jsonl."""

    @staticmethod
    def lines(tag: str) -> List[Dict[str, Any]]:
        try:
            with open("out.jsonl") as f:
                rows = [json.loads(line) for line in f if line.strip()]
        except FileNotFoundError:
            return []
        return [r for r in rows if r.get("tag") == tag]


def machine_logs() -> str:
    """The last lines of the emulator machines' output, for failure messages."""
    import flyjobs

    try:
        url = flyjobs.client().local_api_url()
        if not url:
            return "(no emulator started)"
        auth = {"Authorization": "Bearer test"}

        def get(path: str) -> str:
            with urllib.request.urlopen(urllib.request.Request(url + path, headers=auth), timeout=5) as r:
                return r.read().decode(errors="replace")

        machines = json.loads(get("/v1/apps/flyjobs-local/machines"))
        parts = []
        for m in machines[-6:]:
            logs = get(f"/emulator/apps/flyjobs-local/machines/{m['id']}/logs")
            parts.append(f"--- machine {m['id']} ({m['state']}):\n" + "\n".join(logs.splitlines()[-25:]))
        return "\n".join(parts)
    except Exception as e:  # noqa: BLE001
        return f"(machine logs unavailable: {e!r})"


def wait_until(what: str, check: Callable[[], Any], timeout: float = TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}\n{machine_logs()}")
        time.sleep(0.2)


def wait_for_lines(tag: str, count: int = 1, timeout: float = TIMEOUT) -> List[Dict[str, Any]]:
    return wait_until(f"{count} line(s) tagged {tag}", lambda: (lambda ls: ls if len(ls) >= count else None)(Out.lines(tag)), timeout)  # type: ignore[no-any-return]


def wait_for_state(job_id: int, states: List[str], timeout: float = TIMEOUT) -> Dict[str, Any]:
    import flyjobs

    def check() -> Optional[Dict[str, Any]]:
        job = flyjobs.client().job(job_id)
        return job if job and job["state"] in states else None

    return wait_until(f"job {job_id} in {states}", check, timeout)  # type: ignore[no-any-return]


def local_api_daemons(app_dir: str) -> List[Dict[str, Any]]:
    """The live shared local Machines API daemons whose machines run in `app_dir`: their
    records ({"url", "pid"}) in $TMPDIR/flyjobs-local-*/api.json."""
    found = []
    root = tempfile.gettempdir()
    for d in os.listdir(root):
        state = os.path.join(root, d)
        if not d.startswith("flyjobs-local-"):
            continue
        try:
            with open(os.path.join(state, "spec.json")) as f:
                if json.load(f)["dir"] != app_dir:
                    continue
            with open(os.path.join(state, "api.json")) as f:
                record = json.load(f)
            os.kill(record["pid"], 0)
        except (OSError, ValueError, KeyError):
            continue
        found.append(record)
    return found


def tag() -> str:
    return uuid.uuid4().hex[:10]
