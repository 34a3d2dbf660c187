"""Two processes of one app (as two gunicorn workers would be) on the embedded default: one local
Machines API daemon for both, one scaler acting at a time (the store's leader lock), every job
run exactly once, the leader lock given back when a process exits, and the daemon's machines
stopped (gracefully) when the last process leaves."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from typing import Any, Dict, Iterator, List, Optional

import pytest

from conftest import HERE, STORE, TIMEOUT, local_api_daemons

STOP_TIMEOUT = 60.0  # the daemon gives each machine 10 s of grace; a loaded machine is slow


def _psql(url: str, sql: str) -> str:
    out = subprocess.run(
        ["psql", "-XAtq", "-v", "ON_ERROR_STOP=1", url, "-c", sql],
        check=True, capture_output=True, text=True, env={**os.environ, "PGOPTIONS": "--client-min-messages=warning"},
    )
    return out.stdout


class App:
    """The app: a directory with the jobs module, its store, and its processes."""

    def __init__(self, root: str) -> None:
        self.dir = root
        self.queue = f"shared-{uuid.uuid4().hex[:8]}"
        self.server_url: Optional[str] = None
        self.database_url: Optional[str] = None
        if STORE == "postgres":
            # A schema of its own: one local API per database URL, and no other test's scaler
            # (the session app's) may serve this app's queue.
            self.server_url = os.environ["FLYJOBS_TEST_DATABASE_URL"]
            self.schema = f"shared_{uuid.uuid4().hex[:8]}"
            _psql(self.server_url, f"CREATE SCHEMA {self.schema}")
            sep = "&" if "?" in self.server_url else "?"
            self.database_url = f"{self.server_url}{sep}options=-csearch_path%3D{self.schema}"
        shutil.copy(os.path.join(HERE, "app", "pyjobs.py"), root)
        shutil.copy(os.path.join(HERE, "app", "app_process.py"), root)
        self.procs: List[subprocess.Popen[str]] = []

    def start(self) -> "tuple[subprocess.Popen[str], Dict[str, Any]]":
        env = {**os.environ, "FLYJOBS_TEST_QUEUE": self.queue, "APP_DATABASE_URL": self.database_url or ""}
        env.pop("FLYJOBS_WORKER", None)
        env.pop("FLYJOBS_DATABASE_URL", None)
        p = subprocess.Popen(
            [sys.executable, "app_process.py"], cwd=self.dir, env=env, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )
        self.procs.append(p)
        assert p.stdout is not None
        hello = p.stdout.readline()
        assert hello, f"app process {p.pid} exited before opening its client (code {p.wait()})"
        return p, json.loads(hello)

    def command(self, p: "subprocess.Popen[str]", line: str, expect: str) -> None:
        assert p.stdin is not None and p.stdout is not None
        p.stdin.write(line + "\n")
        p.stdin.flush()
        assert p.stdout.readline().strip() == expect

    def lines(self, tag: str) -> List[Dict[str, Any]]:
        try:
            with open(os.path.join(self.dir, "out.jsonl")) as f:
                rows = [json.loads(line) for line in f if line.strip()]
        except FileNotFoundError:
            return []
        return [r for r in rows if r.get("tag") == tag]

    def scaler_lock_owner(self) -> Optional[str]:
        sql = "SELECT owner FROM flyjobs_locks WHERE name = 'scaler'"
        if self.database_url is None:
            db = sqlite3.connect(os.path.join(self.dir, "flyjobs.sqlite3"), timeout=30)
            try:
                row = db.execute(sql).fetchone()
            finally:
                db.close()
            return row[0] if row else None
        assert self.server_url is not None
        out = _psql(self.server_url, f"SELECT owner FROM {self.schema}.flyjobs_locks WHERE name = 'scaler'").strip()
        return out or None

    def daemons(self) -> List[Dict[str, Any]]:
        return local_api_daemons(self.dir)

    def machine_processes(self) -> List[int]:
        """Processes running in the app's directory other than the app's own and the local API
        daemon: worker machines."""
        mine = {p.pid for p in self.procs} | {d["pid"] for d in self.daemons()}
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) in mine:
                continue
            try:
                if os.readlink(f"/proc/{entry}/cwd") == self.dir:
                    pids.append(int(entry))
            except OSError:
                continue
        return pids

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        if self.server_url is not None:
            _psql(self.server_url, f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")


@pytest.fixture()
def shared_app() -> Iterator[App]:
    root = os.path.realpath(tempfile.mkdtemp(prefix="flyjobs-shared-"))
    app = App(root)
    yield app
    app.close()
    if os.environ.get("FLYJOBS_KEEP_APP") != "1":
        shutil.rmtree(root, ignore_errors=True)


def wait_until(what: str, check: Any, timeout: float = TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.2)


def started_machines(api: str, queue: str) -> int:
    req = urllib.request.Request(f"{api}/v1/apps/flyjobs-local/machines", headers={"Authorization": "Bearer test"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            machines = json.loads(r.read())
    except OSError:
        return 0
    return sum(
        1 for m in machines
        if m["state"] == "started" and (m.get("config", {}).get("metadata") or {}).get("flyjobs_queue") == queue
    )


def test_two_processes_share_one_local_api_and_one_scaler(shared_app: App) -> None:
    app = shared_app
    a, hello_a = app.start()
    b, hello_b = app.start()
    api = hello_a["api"]
    assert api and api.startswith("http://"), hello_a
    assert hello_b["api"] == api, "both processes use the same local Machines API"
    assert len(app.daemons()) == 1, "one local API daemon for the app"

    max_seen = [0]
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            max_seen[0] = max(max_seen[0], started_machines(api, app.queue))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    tag_a, tag_b = uuid.uuid4().hex[:8], uuid.uuid4().hex[:8]
    app.command(a, f"enqueue {tag_a} 20", "enqueued")
    app.command(b, f"enqueue {tag_b} 20", "enqueued")
    wait_until("40 jobs to run", lambda: len(app.lines(tag_a)) >= 20 and len(app.lines(tag_b)) >= 20)
    time.sleep(1)  # a duplicate would show up here
    sampling.set()
    sampler.join()
    for t in (tag_a, tag_b):
        ns = sorted(line["args"][0] for line in app.lines(t))
        assert ns == list(range(20)), f"every job of {t} ran exactly once"
        assert all(line["worker"] == "1" and line["pid"] not in (a.pid, b.pid) for line in app.lines(t))
    # One scaler at a time across both processes: the queue's max_machines (2) held.
    assert 1 <= max_seen[0] <= 2, f"started machines peaked at {max_seen[0]}"
    owner = app.scaler_lock_owner()
    assert owner is not None and any(f"-{p.pid}-" in owner for p in (a, b)), owner

    # The leader leaves: its client is closed at exit, so its leader lock is given back at
    # once (not left to expire in 10 s), the other process takes over, and the API and its
    # machines stay for it.
    leader, other = (a, b) if f"-{a.pid}-" in owner else (b, a)
    assert leader.stdin is not None
    leader.stdin.close()
    assert leader.wait(timeout=TIMEOUT) == 0
    after = app.scaler_lock_owner()
    assert after is None or f"-{leader.pid}-" not in after, f"the leader lock outlived its process: {after}"
    wait_until("the other process to lead", lambda: f"-{other.pid}-" in (app.scaler_lock_owner() or ""), 30)
    assert [d["url"] for d in app.daemons()] == [api], "the API outlives the first process"
    tag_c = uuid.uuid4().hex[:8]
    app.command(other, f"enqueue {tag_c} 3", "enqueued")
    wait_until("the later jobs to run", lambda: len(app.lines(tag_c)) >= 3)
    machines = app.machine_processes()
    assert machines, "worker machines are still up (their queue waits 60 s idle)"

    # The last process leaves: the daemon stops the machines and exits.
    assert other.stdin is not None
    other.stdin.close()
    assert other.wait(timeout=TIMEOUT) == 0
    wait_until("the local API to stop", lambda: not app.daemons(), STOP_TIMEOUT)
    wait_until("the worker machines to stop", lambda: not app.machine_processes(), STOP_TIMEOUT)
    assert sorted(line["args"][0] for line in app.lines(tag_c)) == [0, 1, 2]
