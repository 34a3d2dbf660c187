"""One PostgreSQL store, three languages: a Python job, a Ruby job (plain FlyJobs, no Rails) and
a Node job, each enqueued by its own language and run by its own language's worker on its own
queue (hand-run workers: the queues' max_machines is 0). Each runs exactly once, by the right
worker, and the admin calls (`jobs`, `stats`) of every language see all three the same way: one
schema across languages.

Run by scripts/test-polyglot.sh (FLYJOBS_POLYGLOT_DATABASE_URL: a fresh database)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from typing import Any, Dict, Iterator, List

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.realpath(os.path.join(HERE, "..", ".."))
TIMEOUT = float(os.environ.get("FLYJOBS_TEST_TIMEOUT", "120"))
LANGS = ("python", "ruby", "node")
QUEUE = {"python": "poly-py", "ruby": "poly-rb", "node": "poly-node"}
NAME = {"python": "poly_py:record", "ruby": "PolyRb", "node": "poly-node"}


def tool(lang: str) -> List[str]:
    """The command of a language's tool script (enqueue TOKEN | admin)."""
    return {
        "python": [sys.executable, "poly_py_tool.py"],
        "ruby": ["ruby", "-I", os.path.join(ROOT, "ruby", "lib"), "poly_rb.rb"],
        "node": ["node", "poly_node.js"],
    }[lang]


def worker(lang: str) -> List[str]:
    """A language's worker, serving its queue only, leaving after 3 idle seconds."""
    return {
        "python": [sys.executable, "-m", "flyjobs", "worker", "--import", "poly_py", "--queues", QUEUE["python"], "--wait", "3"],
        "ruby": tool("ruby") + ["work"],
        "node": ["node", os.path.join(ROOT, "node", "dist", "cli.js"), "--require", "./poly_node.js",
                 "--queues", QUEUE["node"], "--wait", "3"],
    }[lang]


@pytest.fixture()
def app() -> Iterator[Dict[str, Any]]:
    url = os.environ.get("FLYJOBS_POLYGLOT_DATABASE_URL")
    if not url:
        pytest.fail("FLYJOBS_POLYGLOT_DATABASE_URL is not set: run scripts/test-polyglot.sh")
    d = os.path.realpath(tempfile.mkdtemp(prefix="flyjobs-polyglot-"))
    for f in os.listdir(os.path.join(HERE, "app")):
        shutil.copy(os.path.join(HERE, "app", f), d)
    # The app's `require("flyjobs")`, as after `npm install ./node`.
    os.makedirs(os.path.join(d, "node_modules"))
    os.symlink(os.path.join(ROOT, "node"), os.path.join(d, "node_modules", "flyjobs"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLYJOBS_") or k.startswith("FLYJOBS_EMULATOR_")}
    env["FLYJOBS_DATABASE_URL"] = url
    # Hand-run workers: no scaler boots machines for these queues.
    env["FLYJOBS_QUEUES"] = ";".join(f"{q}:max_machines=0" for q in QUEUE.values())
    yield {"dir": d, "env": env}
    if os.environ.get("FLYJOBS_KEEP_APP") != "1":
        shutil.rmtree(d, ignore_errors=True)


def run(app: Dict[str, Any], argv: List[str]) -> Any:
    p = subprocess.run(argv, cwd=app["dir"], env=app["env"], capture_output=True, text=True, timeout=TIMEOUT)
    assert p.returncode == 0, f"{argv} exited {p.returncode}\n{p.stdout}\n{p.stderr}"
    lines = [line for line in p.stdout.splitlines() if line.startswith("{")]
    assert lines, f"{argv} printed no JSON\n{p.stdout}\n{p.stderr}"
    return json.loads(lines[-1])


def snake_keys(record: Dict[str, Any]) -> Dict[str, Any]:
    """Node gives records camelCase keys (mapped once, by the package): compare in the core's."""
    return {re.sub(r"[A-Z]", lambda m: "_" + m.group(0).lower(), k): v for k, v in record.items()}


def out_lines(app: Dict[str, Any]) -> List[Dict[str, Any]]:
    try:
        with open(os.path.join(app["dir"], "out.jsonl")) as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def test_python_ruby_and_node_jobs_share_one_store(app: Dict[str, Any]) -> None:
    tokens = {lang: f"{lang}-{uuid.uuid4().hex[:8]}" for lang in LANGS}
    ids = {lang: run(app, tool(lang) + ["enqueue", tokens[lang]])["id"] for lang in LANGS}
    assert len(set(ids.values())) == 3

    # Every language sees the three waiting jobs, as the others wrote them.
    for viewer in LANGS:
        jobs = {j["id"]: j for j in run(app, tool(viewer) + ["admin"])["jobs"]}
        for lang in LANGS:
            job = jobs.get(ids[lang])
            assert job is not None, f"{viewer} does not see the {lang} job"
            assert (job["state"], job["queue"], job["name"]) == ("ready", QUEUE[lang], NAME[lang]), (viewer, job)

    # Each language's worker, on its own queue, all at once.
    workers = {
        lang: subprocess.Popen(worker(lang), cwd=app["dir"], env=app["env"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
        for lang in LANGS
    }
    for lang, p in workers.items():
        try:
            out, _ = p.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
            pytest.fail(f"the {lang} worker did not leave when idle:\n{out}")
        assert p.returncode == 0, f"the {lang} worker exited {p.returncode}:\n{out}"

    # Each job ran exactly once, in its own language's worker.
    lines = out_lines(app)
    assert sorted(line["token"] for line in lines) == sorted(tokens.values()), lines
    for line in lines:
        assert line["token"] == tokens[line["lang"]], f"a {line['lang']} worker ran another language's job: {line}"
        assert line["pid"] not in (p.pid for lang, p in workers.items() if lang != line["lang"])

    # And every language sees them completed, with the same stats.
    stats = {}
    for viewer in LANGS:
        seen = run(app, tool(viewer) + ["admin"])
        jobs = {j["id"]: j for j in seen["jobs"]}
        for lang in LANGS:
            job = jobs[ids[lang]]
            assert (job["state"], job["attempts"]) == ("completed", 1), (viewer, job)
        stats[viewer] = {s["queue"]: snake_keys(s) for s in seen["stats"] if s["queue"] in QUEUE.values()}
        assert set(stats[viewer]) == set(QUEUE.values()), (viewer, seen["stats"])
    assert stats["python"] == stats["ruby"] == stats["node"], stats
    for q in QUEUE.values():
        assert (stats["python"][q]["completed"], stats["python"][q]["ready"]) == (1, 0), stats["python"][q]
