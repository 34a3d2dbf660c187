"""flyjobs vs RQ from Python, in one run: enqueue µs/job and no-op jobs/s through one worker
process.

- enqueue: N jobs (after 100 warm-up ones), one at a time from one thread, through
  `@flyjobs.job(...).enqueue` on SQLite and on PostgreSQL (FLYJOBS_TEST_DATABASE_URL), and
  through RQ's `Queue.enqueue` on Redis (a redis-server this script starts on loopback, no
  persistence).
- throughput: N no-op jobs enqueued first, then one worker process started and timed until the
  queue is drained: `python -m flyjobs worker --concurrency 1` (sync jobs on one thread) vs
  `rq worker --burst` (RQ's default worker forks a work horse per job; `SimpleWorker` runs them
  in-process and is measured too).

    cargo build --workspace && cp target/debug/libflyjobs_python.so python/src/flyjobs/_native.abi3.so
    .build/python-venv/bin/pip install rq==2.12.0 redis
    scripts/with-postgres.sh .build/python-venv/bin/python bench/python_bench.py    # N=1000
    # the release build (what `pip install ./python` builds):
    FLYJOBS_BENCH_SO=target/release/libflyjobs_python.so scripts/with-postgres.sh .build/python-venv/bin/python bench/python_bench.py
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = int(os.environ.get("N", "1000"))
WARMUP = 100

BENCH_JOBS = '''
import flyjobs

@flyjobs.job(queue="bench")
def noop(i, note):
    return None

def rq_noop(i, note):
    return None
'''


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


def bench_rq(workdir: str) -> Dict[str, float]:
    import redis
    import rq

    port = free_port()
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no"], stdout=subprocess.DEVNULL)
    try:
        conn = redis.Redis(port=port)
        deadline = time.time() + 10
        while True:
            try:
                conn.ping()
                break
            except redis.exceptions.ConnectionError:
                if time.time() > deadline:
                    raise
                time.sleep(0.05)
        import benchjobs

        q = rq.Queue("bench", connection=conn)
        us = measure(f"RQ {rq.__version__}, Redis", lambda i, note: q.enqueue(benchjobs.rq_noop, i, note))
        out: Dict[str, float] = {"enqueue_us": us}
        for worker_class in ("rq.worker.Worker", "rq.worker.SimpleWorker"):
            q.empty()
            for i in range(N):
                q.enqueue(benchjobs.rq_noop, i, "a short note")
            argv = [sys.executable, "-m", "rq.cli", "worker", "--burst", "--url", f"redis://127.0.0.1:{port}",
                    "--worker-class", worker_class, "--quiet", "bench"]
            out[worker_class] = drain(f"rq worker ({worker_class.rsplit('.', 1)[1]})", argv,
                                      {**os.environ, "PYTHONPATH": workdir}, lambda: q.count == 0 and
                                      q.started_job_registry.count == 0)
        return out
    finally:
        server.terminate()
        server.wait(10)


def main() -> None:
    so = os.environ.get("FLYJOBS_BENCH_SO")
    if so:  # before flyjobs is imported (here and by the worker processes)
        shutil.copy(os.path.join(ROOT, so), os.path.join(ROOT, "python", "src", "flyjobs", "_native.abi3.so"))
    workdir = tempfile.mkdtemp(prefix="flyjobs-pybench-")
    with open(os.path.join(workdir, "benchjobs.py"), "w") as f:
        f.write(BENCH_JOBS)
    os.chdir(workdir)
    sys.path.insert(0, workdir)
    print(f"N={N}, python {sys.version.split()[0]}, load average {os.getloadavg()[0]:.1f}", flush=True)
    results: Dict[str, Dict[str, float]] = {}
    results["sqlite"] = bench_flyjobs("SQLite", f"sqlite://{workdir}/bench.db?mode=rwc", workdir)
    pg: Optional[str] = os.environ.get("FLYJOBS_TEST_DATABASE_URL")
    if pg:
        results["postgres"] = bench_flyjobs("PostgreSQL", pg, workdir)
    else:
        print("(FLYJOBS_TEST_DATABASE_URL unset: no PostgreSQL rows)")
    results["rq"] = bench_rq(workdir)
    rq_us = results["rq"]["enqueue_us"]
    rq_rate = results["rq"]["rq.worker.Worker"]
    for store in ("sqlite", "postgres"):
        if store in results:
            r = results[store]
            print(f"ratio {store}: enqueue {r['enqueue_us'] / rq_us:.2f}x RQ's time, "
                  f"throughput {r['jobs_per_s'] / rq_rate:.2f}x RQ's (forking worker), "
                  f"{r['jobs_per_s'] / results['rq']['rq.worker.SimpleWorker']:.2f}x RQ's SimpleWorker")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
