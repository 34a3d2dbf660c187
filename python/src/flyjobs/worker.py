"""Running jobs in Python. The core claims jobs, keeps their leases alive and applies the retry
policy; Python only runs them: Rust never calls into Python from its own threads. Each worker
thread waits for its next job with the GIL released, returning to Python at least every
second so signals and Ctrl-C are served.

Sync jobs run on the worker threads; `async def` jobs run on one event loop (its own thread),
each awaited by the worker thread that claimed it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import traceback
from typing import Any, Callable, Dict, List, Optional

from . import _json, _native
from .jobs import is_coroutine_function, resolve

logger = logging.getLogger("flyjobs")

#: Longest time a thread stays in native code waiting for a job.
POLL_SECONDS = 1.0

#: The worker running in this process, if any (`flyjobs.stopping()` asks it).
current: Optional["Worker"] = None


class Job:
    """A claimed job as the worker sees it."""

    def __init__(self, lease: _native.Lease) -> None:
        self.id: int = lease.job_id
        self.queue: str = lease.queue
        self.name: str = lease.name
        self.attempts: int = lease.attempts
        self.payload: Any = json.loads(lease.payload)

    def __repr__(self) -> str:
        return f"<flyjobs.Job id={self.id} queue={self.queue!r} name={self.name!r} attempts={self.attempts}>"


def failure_of(exc: BaseException) -> Dict[str, Any]:
    """What `fail` records: the exception's type, message and traceback (innermost frame
    first, as the core stores backtraces)."""
    kind = type(exc)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    frames = traceback.extract_tb(exc.__traceback__)
    backtrace = [f"{f.filename}:{f.lineno}:in {f.name}" for f in reversed(frames)]
    return {"class": name, "message": str(exc), "backtrace": backtrace}


def call_payload(job: Job, loop: Callable[[], asyncio.AbstractEventLoop]) -> Any:
    """Runs a `@flyjobs.job` payload ({"function", "args", "kwargs"}): sync functions here,
    coroutine functions on the worker's event loop."""
    payload = job.payload
    if not isinstance(payload, dict) or "function" not in payload:
        raise LookupError(f"job {job.id} has no Python function in its payload: {payload!r}")
    func = resolve(str(payload["function"]))
    args = payload.get("args") or []
    kwargs = payload.get("kwargs") or {}
    if is_coroutine_function(func):
        return asyncio.run_coroutine_threadsafe(func(*args, **kwargs), loop()).result()
    return func(*args, **kwargs)


class Worker:
    """Pulls jobs from the queue and runs them (`Client.worker(...)` makes one).

    >>> worker = client.worker(queues=["mail"], concurrency=4, wait=600)   # doctest: +SKIP
    >>> signal.signal(signal.SIGTERM, lambda *_: worker.quiet())
    >>> worker.run()    # returns when idle for 600 s, or quiet and done
    """

    def __init__(self, native: _native.Worker) -> None:
        self._native = native
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._loop_lock = threading.Lock()

    @property
    def concurrency(self) -> int:
        """Jobs at once (= worker threads of `run`)."""
        return self._native.concurrency

    @property
    def shutdown_timeout(self) -> float:
        """Seconds a stopping worker gives running jobs (the shutdown_timeout option)."""
        return self._native.shutdown_timeout

    @property
    def stopping(self) -> bool:
        """Whether the worker was asked to quiet or stop."""
        return self._native.stopping

    def quiet(self) -> None:
        """Claims nothing new; running jobs finish. Safe in a signal handler."""
        self._native.quiet()

    def stop(self, timeout: Optional[float] = None) -> None:
        """Quiets, waits up to `timeout` seconds (default: shutdown_timeout) for running jobs,
        gives back (releases) the ones that have not finished, and leaves the registry."""
        self._native.stop(float(self.shutdown_timeout if timeout is None else timeout))

    def event_loop(self) -> asyncio.AbstractEventLoop:
        """The one event loop `async def` jobs run on (started on first use)."""
        with self._loop_lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="flyjobs-async", daemon=True).start()
                self._loop = loop
            return self._loop

    def run(
        self,
        perform: Optional[Callable[[Job], Any]] = None,
        *,
        threads: Optional[int] = None,
        on_failure: Optional[Callable[[Job, BaseException, Dict[str, Any]], None]] = None,
    ) -> None:
        """Runs jobs on `threads` threads (default: the concurrency) until none is left to run:
        the queue stayed empty for the worker's wait, or `quiet`/`stop` was called. `perform`
        (default: call the `@flyjobs.job` function of the payload) returning completes the job;
        raising an Exception fails it with its type, message and traceback and the core's retry
        policy decides. Returns once every thread has finished; call `stop` afterwards for the
        jobs a signal interrupted.
        """
        global current
        current = self
        runner = perform or (lambda job: call_payload(job, self.event_loop))
        count = int(threads if threads is not None else self.concurrency)
        workers: List[threading.Thread] = [
            threading.Thread(
                target=self._work,
                args=(self._native.slot(), runner, on_failure),
                name=f"flyjobs-worker-{i}",
                daemon=True,
            )
            for i in range(count)
        ]
        for t in workers:
            t.start()
        # The main thread joins in short slices so that signal handlers (which Python runs on
        # the main thread only) are served promptly.
        while any(t.is_alive() for t in workers):
            for t in workers:
                t.join(0.2)
            if self.stopping:
                return

    def _work(
        self,
        slot: _native.Slot,
        perform: Callable[[Job], Any],
        on_failure: Optional[Callable[[Job, BaseException, Dict[str, Any]], None]],
    ) -> None:
        while True:
            lease = self._next(slot)
            if lease is None:
                return
            job: Optional[Job] = None
            try:
                job = Job(lease)
                result = perform(job)
            except Exception as e:  # noqa: BLE001 - a job's exception is recorded, not raised
                failure = failure_of(e)
                try:
                    outcome = json.loads(lease.fail(_json.dumps(failure)))
                except Exception as fail_error:  # noqa: BLE001
                    logger.warning("job %s: recording its failure failed: %s", lease.job_id, fail_error)
                    continue
                if on_failure is not None:
                    on_failure(job or Job(lease), e, outcome)
            except BaseException:
                lease.release()
                raise
            else:
                try:
                    self._complete(lease, result)
                except Exception as e:  # noqa: BLE001 - e.g. released by a stop meanwhile
                    logger.warning("job %s: completing it failed: %s", lease.job_id, e)

    @staticmethod
    def _complete(lease: _native.Lease, result: Any) -> None:
        """Completes the job, recording what it returned (the job's `result`) when that is
        JSON; None and anything else complete it without a result. Without a result the
        completion is written by the worker's group commit while the thread goes on."""
        if result is None:
            lease.complete_later()
            return
        try:
            text = _json.dumps(result)
        except (TypeError, ValueError):
            logger.warning("job %s returned a %s, not JSON: its result is not kept",
                           lease.job_id, type(result).__name__)
            lease.complete()
            return
        lease.complete_with(text)

    @staticmethod
    def _next(slot: _native.Slot) -> Optional[_native.Lease]:
        while True:
            lease = slot.next(POLL_SECONDS)
            if lease is not False:
                return lease
