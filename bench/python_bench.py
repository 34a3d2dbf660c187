"""flyjobs vs Celery and RQ from Python, in one run: enqueue µs/job and no-op jobs/s through one
worker process, in interleaved rounds (flyjobs SQLite, flyjobs PostgreSQL, Celery, RQ; again;
...: ROUNDS, default 3), so that a change of load hits every system alike. Each ratio is computed
per round; the minimum and the median over the rounds are printed.

- enqueue: N jobs (after 100 warm-up ones), one at a time from one thread, through
  `@flyjobs.job(...).enqueue` on SQLite and on PostgreSQL (FLYJOBS_TEST_DATABASE_URL), Celery's
  `task.delay` and RQ's `Queue.enqueue`, both on Redis (one redis-server this script starts on
  loopback, no persistence; Celery with results ignored).
- throughput: N no-op jobs enqueued first, then one worker process started and timed until the
  queue is drained (start-up included): `python -m flyjobs worker --concurrency 1` (sync jobs on
  one thread), `celery worker --pool solo` (jobs in the worker process itself; prefetch 4, the
  default) and `rq worker --burst --worker-class rq.worker.SimpleWorker` (in-process; RQ's
  default worker forks a work horse per job: RQ_FORKING=1 adds it, ~17 jobs/s here).

    cargo build --workspace --lib --bins --tests && cp target/debug/libflyjobs_python.so python/src/flyjobs/_native.abi3.so
    .build/python-venv/bin/pip install "celery[redis]==5.5.3" rq==2.12.0 redis
    scripts/with-postgres.sh .build/python-venv/bin/python bench/python_bench.py    # N=1000 ROUNDS=3
    # the release build (what `pip install ./python` builds):
    FLYJOBS_BENCH_SO=target/release/libflyjobs_python.so scripts/with-postgres.sh .build/python-venv/bin/python bench/python_bench.py
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = int(os.environ.get("N", "1000"))
WARMUP = 100

BENCH_JOBS = '''
import os

import flyjobs
from celery import Celery

@flyjobs.job(queue="bench")
def noop(i, note):
    return None

def rq_noop(i, note):
    return None

celery_app = Celery("benchjobs", broker=os.environ.get("BENCH_CELERY_BROKER", "redis://127.0.0.1:6379/1"))
celery_app.conf.update(task_ignore_result=True, task_default_queue="bench", worker_hijack_root_logger=False)

@celery_app.task(name="celery_noop")
def celery_noop(i, note):
    return None
'''
ROUNDS = int(os.environ.get("ROUNDS", "3"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure(label: str, enqueue: Callable[[int, str], Any]) -> float:
    for i in range(WARMUP):
        enqueue(i, "warm-up")
    t0 = time.perf_counter()
    for i in range(N):
        enqueue(i, "a short note")
    elapsed = time.perf_counter() - t0
    us = elapsed * 1e6 / N
    print(f"enqueue  {label:<36} {us:9.1f} µs/job  ({N} in {elapsed:.3f} s)", flush=True)
    return us


def drain(label: str, argv: List[str], env: Dict[str, str], done: Callable[[], bool]) -> float:
    t0 = time.perf_counter()
    worker = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not done():
            if worker.poll() is not None and not done():
                raise RuntimeError(f"{label}: the worker exited ({worker.returncode}) before the queue was drained")
            time.sleep(0.02)
        elapsed = time.perf_counter() - t0
    finally:
        worker.terminate()
        worker.wait(30)
    rate = N / elapsed
    print(f"throughput {label:<34} {rate:9.1f} jobs/s  ({N} in {elapsed:.3f} s, worker start included)", flush=True)
    return rate


def bench_flyjobs(label: str, url: str, workdir: str) -> Dict[str, float]:
    import flyjobs

    flyjobs.reset()
    flyjobs.configure(database_url=url, scaler=False)
    import benchjobs  # noqa: E402

    client = flyjobs.client()
    client.clear("bench")
    us = measure(f"flyjobs, {label}", lambda i, note: benchjobs.noop.enqueue(i, note))
    client.clear("bench")
    for i in range(N):
        benchjobs.noop.enqueue(i, "a short note")
    env = {**os.environ, "FLYJOBS_DATABASE_URL": url, "FLYJOBS_LOG": "warn"}
    argv = [sys.executable, "-m", "flyjobs", "worker", "--import", "benchjobs", "--queues", "bench",
            "--concurrency", "1", "--wait", "forever"]

    def done() -> bool:
        stats = {s["queue"]: s for s in client.stats()}
        s = stats.get("bench", {})
        return s.get("ready", 0) == 0 and s.get("running", 0) == 0

    rate = drain(f"flyjobs worker, {label}", argv, env, done)
    client.clear("bench")
    flyjobs.reset()
    return {"enqueue_us": us, "jobs_per_s": rate}


class Redis:
    """One redis-server on loopback for the whole run: RQ in database 0, Celery in database 1."""

    def __init__(self) -> None:
        import redis

        self.port = free_port()
        self.server = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                        "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
        self.rq = redis.Redis(port=self.port, db=0)
        self.celery = redis.Redis(port=self.port, db=1)
        deadline = time.time() + 10
        while True:
            try:
                self.rq.ping()
                break
            except redis.exceptions.ConnectionError:
                if time.time() > deadline:
                    raise
                time.sleep(0.05)
        os.environ["BENCH_CELERY_BROKER"] = f"redis://127.0.0.1:{self.port}/1"

    def close(self) -> None:
        self.server.terminate()
        self.server.wait(10)


def bench_rq(redis: Redis, workdir: str) -> Dict[str, float]:
    import rq

    import benchjobs

    q = rq.Queue("bench", connection=redis.rq)
    q.empty()
    us = measure(f"RQ {rq.__version__}, Redis", lambda i, note: q.enqueue(benchjobs.rq_noop, i, note))
    out: Dict[str, float] = {"enqueue_us": us}
    classes = ["rq.worker.SimpleWorker"] + (["rq.worker.Worker"] if os.environ.get("RQ_FORKING") == "1" else [])
    for worker_class in classes:
        q.empty()
        for i in range(N):
            q.enqueue(benchjobs.rq_noop, i, "a short note")
        argv = [sys.executable, "-m", "rq.cli", "worker", "--burst", "--url", f"redis://127.0.0.1:{redis.port}/0",
                "--worker-class", worker_class, "--quiet", "bench"]
        out[worker_class] = drain(f"rq worker ({worker_class.rsplit('.', 1)[1]})", argv,
                                  {**os.environ, "PYTHONPATH": workdir}, lambda: q.count == 0 and
                                  q.started_job_registry.count == 0)
    out["jobs_per_s"] = out["rq.worker.SimpleWorker"]
    return out


def bench_celery(redis: Redis, workdir: str) -> Dict[str, float]:
    import celery

    import benchjobs

    redis.celery.flushdb()
    us = measure(f"Celery {celery.__version__}, Redis", lambda i, note: benchjobs.celery_noop.delay(i, note))
    redis.celery.flushdb()
    for i in range(N):
        benchjobs.celery_noop.delay(i, "a short note")
    argv = [sys.executable, "-m", "celery", "-A", "benchjobs", "worker", "--pool", "solo", "--concurrency", "1",
            "--queues", "bench", "--loglevel", "WARNING", "--without-gossip", "--without-mingle",
            "--without-heartbeat"]
    # Drained: no message left in the queue list, none reserved (kombu's "unacked" hash: with
    # acks_late off a message is acked as its no-op task starts).
    rate = drain("celery worker (solo pool)", argv, {**os.environ, "PYTHONPATH": workdir},
                 lambda: redis.celery.llen("bench") == 0 and redis.celery.hlen("unacked") == 0)
    redis.celery.flushdb()
    return {"enqueue_us": us, "jobs_per_s": rate}


def spread(values: List[float]) -> str:
    return f"min {min(values):.2f}x, median {statistics.median(values):.2f}x"


def main() -> None:
    so = os.environ.get("FLYJOBS_BENCH_SO")
    if so:  # before flyjobs is imported (here and by the worker processes)
        shutil.copy(os.path.join(ROOT, so), os.path.join(ROOT, "python", "src", "flyjobs", "_native.abi3.so"))
    workdir = tempfile.mkdtemp(prefix="flyjobs-pybench-")
    with open(os.path.join(workdir, "benchjobs.py"), "w") as f:
        f.write(BENCH_JOBS)
    os.chdir(workdir)
    sys.path.insert(0, workdir)
    print(f"N={N}, ROUNDS={ROUNDS}, python {sys.version.split()[0]}, load average {os.getloadavg()[0]:.1f}", flush=True)
    redis = Redis()
    pg: Optional[str] = os.environ.get("FLYJOBS_TEST_DATABASE_URL")
    if not pg:
        print("(FLYJOBS_TEST_DATABASE_URL unset: no PostgreSQL rows)")
    rounds: List[Dict[str, Dict[str, float]]] = []
    try:
        for r in range(ROUNDS):
            print(f"-- round {r + 1}/{ROUNDS}, load average {os.getloadavg()[0]:.1f}", flush=True)
            results: Dict[str, Dict[str, float]] = {}
            results["sqlite"] = bench_flyjobs("SQLite", f"sqlite://{workdir}/bench.db?mode=rwc", workdir)
            if pg:
                results["postgres"] = bench_flyjobs("PostgreSQL", pg, workdir)
            results["celery"] = bench_celery(redis, workdir)
            results["rq"] = bench_rq(redis, workdir)
            rounds.append(results)
    finally:
        redis.close()
    print(f"-- {ROUNDS} rounds: per-round ratios, min and median (enqueue: flyjobs' time / theirs, lower is "
          "better; throughput: flyjobs' jobs/s / theirs, higher is better)")
    for store in ("sqlite", "postgres"):
        if store not in rounds[0]:
            continue
        for other in ("celery", "rq"):
            enq = [r[store]["enqueue_us"] / r[other]["enqueue_us"] for r in rounds]
            thr = [r[store]["jobs_per_s"] / r[other]["jobs_per_s"] for r in rounds]
            print(f"ratio {store} vs {other:<6}: enqueue {spread(enq)} its time; throughput {spread(thr)} its jobs/s")
    for system in ("sqlite", "postgres", "celery", "rq"):
        if system in rounds[0]:
            enq = [r[system]["enqueue_us"] for r in rounds]
            thr = [r[system]["jobs_per_s"] for r in rounds]
            print(f"median {system:<8}: enqueue {statistics.median(enq):8.1f} µs/job, throughput "
                  f"{statistics.median(thr):8.1f} jobs/s")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
