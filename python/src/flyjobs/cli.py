"""`python -m flyjobs worker` (also the `flyjobs-worker` console script): the process a worker
machine runs. Imports the app's job modules, then runs the core's worker loop: threads for sync
jobs, one event loop for async ones. SIGTERM/SIGINT (what Fly sends on stop): quiet, let running
jobs finish within shutdown_timeout, release the rest, exit 0. Exits 0 when the queue stayed
empty for --wait seconds.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence

if TYPE_CHECKING:
    from .client import Client
    from .worker import Job

USAGE = "python -m flyjobs worker [--import MODULE]... [--queues a,b] [--wait SECONDS|forever] [--concurrency N] [--pool MODE]"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m flyjobs", description="flyjobs worker", usage=USAGE)
    sub = p.add_subparsers(dest="command", required=True)
    w = sub.add_parser("worker", help="run jobs from the queue", usage=USAGE)
    w.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="module defining @flyjobs.job functions (repeatable; also comma-separated)")
    w.add_argument("-q", "--queues", help="comma-separated queues to serve (default: $FLYJOBS_WORKER_QUEUES or default)")
    w.add_argument("-w", "--wait", help="idle seconds before exiting, or forever (default: the queue's setting)")
    w.add_argument("-c", "--concurrency", type=int, help="jobs at once")
    w.add_argument("--pool", help="none, stop or suspend: what this machine does when idle (set by the scaler)")
    a = sub.add_parser("local-api", help="serve the app's shared local Machines API (started by the package itself)")
    a.add_argument("state", help="the state directory the starting process prepared")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    # `flyjobs-worker ARGS` is `python -m flyjobs worker ARGS`.
    if not args or args[0] not in ("worker", "local-api", "-h", "--help"):
        args.insert(0, "worker")
    opts = _parser().parse_args(args)
    if opts.command == "local-api":
        return serve_local_api(opts.state)
    queues: Optional[List[str]] = None
    if opts.queues is not None:
        queues = [q.strip() for q in opts.queues.split(",") if q.strip()]
        if not queues:
            print(f"flyjobs worker: --queues is empty\nusage: {USAGE}", file=sys.stderr)
            return 2
    return run_worker(
        imports=[m.strip() for spec in opts.imports for m in spec.split(",") if m.strip()],
        queues=queues,
        wait=opts.wait,
        concurrency=opts.concurrency,
        pool=opts.pool,
    )


def serve_local_api(state: str) -> int:
    """`python -m flyjobs local-api STATE`: the app's shared local Machines API off Fly, started
    in a process group of its own by the first process of the app that needs one (see
    `flyjobs.client.local_api_command`). Returns when no process of the app is left and its
    machines are stopped."""
    from . import _native, logs

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logs.start()
    try:
        _native.serve_local_api(state)
    finally:
        logs.drain()
    return 0


def run_worker(
    imports: Sequence[str],
    queues: Optional[List[str]] = None,
    wait: Optional[str] = None,
    concurrency: Optional[int] = None,
    pool: Optional[str] = None,
    client: "Optional[Callable[[], Client]]" = None,
    perform: "Optional[Callable[[Job], Any]]" = None,
    usage: str = USAGE,
) -> int:
    """Runs a worker until idle or signalled, then exits the process. `client` (default: the
    process-wide one) and `perform` (default: call the payload's `@flyjobs.job` function) let
    framework integrations (Django) run their own jobs."""
    # A worker never runs the embedded scaler: mark the process before the app's code runs.
    os.environ["FLYJOBS_WORKER"] = "1"
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    log = logging.getLogger("flyjobs")
    # `python -m` puts the current directory first on sys.path; the console script does not.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    import flyjobs
    from flyjobs import logs

    from .errors import FlyJobsError

    for module in imports:
        importlib.import_module(module)
    logs.start()
    try:
        opened = client() if client is not None else flyjobs.client()
        worker = opened.worker(queues=queues, concurrency=concurrency, wait=wait, pool=pool)
    except FlyJobsError as e:
        print(f"flyjobs worker: {e}\nusage: {usage}", file=sys.stderr)
        logs.drain()
        return 2

    signals: Dict[str, Any] = {}

    def on_signal(signum: int, _frame: Any) -> None:
        signals.setdefault("first", signum)
        worker.quiet()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    pid = os.getpid()
    log.info("flyjobs worker %s: queues=%s concurrency=%s wait=%s", pid,
             ",".join(queues) if queues else "(FLYJOBS_WORKER_QUEUES or default)",
             worker.concurrency, wait or "the queue's")

    def on_failure(job: Any, error: BaseException, outcome: Dict[str, Any]) -> None:
        decision = f"retry at {outcome.get('at')}" if outcome.get("outcome") == "retry" else outcome.get("outcome")
        log.info("flyjobs worker %s: job %s (%s) raised %s: %s -> %s", pid, job.id, job.name,
                 type(error).__name__, error, decision)

    worker.run(perform, on_failure=on_failure)
    # Quiet (a signal) or idle: running jobs get shutdown_timeout, the rest go back to the queue.
    worker.stop()
    logs.drain()
    log.info("flyjobs worker %s: done%s", pid, " (signal)" if signals else "")
    for h in logging.getLogger().handlers:
        h.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    # Threads still running an unfinished job were released above; do not wait for them.
    os._exit(0)
