"""`Client` (blocking) and `AsyncClient` (asyncio): a connection to the flyjobs queue
(PostgreSQL or SQLite) and, when the scaler runs in this process, to the Machines API. Off Fly
(no FLY_MACHINE_ID) the core starts its embedded Machines API in-process, so "machines" are
local worker processes in the current directory, served by one local Machines API per app
(`local_api_command()`): every process of the app (gunicorn workers, a console, the worker
machines' own clients) uses the same one, and its machines outlive any one process.

Options are the core's (`flyjobs.option_specs()`, the README's settings table); every option not
given comes from its env var (FLYJOBS_DATABASE_URL, FLY_API_TOKEN, ...) or its default, decided
by the core: this package has no defaults of its own.

Fork safety: a client remembers the pid that opened it. Used in a child after `os.fork()`
(gunicorn, multiprocessing), it opens its own native client there: the parent's belongs to the
parent's runtime threads, which do not exist in the child.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

from . import _json
from . import _native
from ._json import Time

if TYPE_CHECKING:
    from types import TracebackType

    from .worker import Worker

JobMap = Dict[str, Any]

# Native clients opened by a parent process, seen in a child after fork(): never closed or
# dropped there (their runtime threads are the parent's).
_LEFT_BY_PARENT: List[_native.Client] = []


def default_worker_command() -> List[str]:
    """What worker machines run unless worker_command (FLYJOBS_WORKER_COMMAND) is set: this
    interpreter's `-m flyjobs worker` with `--import` of every module that registered a job."""
    from .jobs import registered_modules

    command = [sys.executable, "-m", "flyjobs", "worker"]
    for module in registered_modules():
        command += ["--import", module]
    return command


def local_api_command() -> List[str]:
    """The command that serves the app's local Machines API off Fly (`python -m flyjobs
    local-api STATE`): one daemon shared by every process of the app, started by the first one
    that needs it; when the last process leaves, it stops its machines with their stop signal
    and grace and exits."""
    return [sys.executable, "-m", "flyjobs", "local-api"]


class _Handle:
    """The native client of one process, opened on first use and again after a fork."""

    def __init__(
        self,
        options: Mapping[str, Any],
        worker_command: Optional[Sequence[str]],
        start_scaler: bool = False,
        local_api: Optional[Sequence[str]] = None,
    ) -> None:
        self.options = dict(options)
        self.worker_command = None if worker_command is None else [str(a) for a in worker_command]
        self.local_api = local_api_command() if local_api is None else [str(a) for a in local_api]
        self.start_scaler = start_scaler
        self._native: Optional[_native.Client] = None
        self._pid = 0
        self._lock = threading.Lock()
        self._lock_pid = os.getpid()
        self._closed = False

    def _args(self) -> "tuple[str, List[str]]":
        command = self.worker_command if self.worker_command is not None else default_worker_command()
        return _json.options(self.options), command

    def _current(self) -> Optional[_native.Client]:
        if self._closed:
            raise _closed_error()
        pid = os.getpid()
        if self._native is not None and self._pid == pid:
            return self._native
        if self._lock_pid != pid:  # a lock held at fork time stays held in the child
            self._lock = threading.Lock()
            self._lock_pid = pid
        return None

    def _adopt(self, opened: _native.Client) -> _native.Client:
        if self._native is not None and self._pid != os.getpid():
            _LEFT_BY_PARENT.append(self._native)
        self._native, self._pid = opened, os.getpid()
        return opened

    def native(self) -> _native.Client:
        current = self._current()
        if current is not None:
            return current
        with self._lock:
            current = self._current()
            if current is not None:
                return current
            options, command = self._args()
            opened = _native.Client.open(options, command, self.local_api)
            if self.start_scaler:
                opened.call("start_scaler", "null")
            return self._adopt(opened)

    async def anative(self) -> _native.Client:
        current = self._current()
        if current is not None:
            return current
        options, command = self._args()
        opened = await _native.Client.open_async(options, command, self.local_api)
        if self.start_scaler:
            await opened.call_async("start_scaler", "null")
        with self._lock:
            current = self._native if self._pid == os.getpid() else None
            if current is not None:  # another task opened one meanwhile
                await opened.close_async()
                return current
            return self._adopt(opened)

    def _take(self) -> Optional[_native.Client]:
        self._closed = True
        native, self._native = self._native, None
        if native is not None and self._pid != os.getpid():
            _LEFT_BY_PARENT.append(native)  # the parent's: never closed or dropped here
            return None
        return native

    def close(self) -> None:
        native = self._take()
        if native is not None:
            native.close()

    async def aclose(self) -> None:
        native = self._take()
        if native is not None:
            await native.close_async()


def _closed_error() -> Exception:
    from .errors import ShutdownError

    return ShutdownError("the client is closed")


def _admin_filter(
    queue: Optional[str], state: Optional[str], name: Optional[str], limit: int, after_id: Optional[int]
) -> Dict[str, Any]:
    given = {"queue": queue, "state": state, "name": name, "limit": limit, "after_id": after_id}
    return {k: v for k, v in given.items() if v is not None}


class Client:
    """A blocking client; a context manager that closes it.

    >>> with flyjobs.Client(database_url="sqlite://jobs.db") as client:   # doctest: +SKIP
    ...     job = client.enqueue({"user_id": 42}, queue="mail", name="welcome")
    ...     client.job(job["id"])["state"]
    'ready'
    """

    def __init__(
        self,
        *,
        default_worker_command: Optional[Sequence[str]] = None,
        local_api_command: Optional[Sequence[str]] = None,
        **options: Any,
    ) -> None:
        """Opens a client now (a bad option raises `flyjobs.ConfigError` naming it).

        :param default_worker_command: what worker machines run unless the worker_command option
            says otherwise (default: `python -m flyjobs worker --import <modules with jobs>`)
        :param local_api_command: off Fly, what serves the app's shared local Machines API
            (default: `flyjobs.client.local_api_command()`); [] runs it inside this process
        :param options: core options: database_url, queues ({"mail": {"max_machines": 3}}), ...
        """
        self._handle = _Handle(options, default_worker_command, local_api=local_api_command)
        self._handle.native()

    @classmethod
    def _from_handle(cls, handle: _Handle) -> "Client":
        client = cls.__new__(cls)
        client._handle = handle
        return client

    def __enter__(self) -> "Client":
        return self

    def __exit__(
        self,
        exc_type: "Optional[type[BaseException]]",
        exc: Optional[BaseException],
        tb: "Optional[TracebackType]",
    ) -> None:
        self.close()

    def _call(self, name: str, arg: Any = None) -> Any:
        return _json.loads(self._handle.native().call(name, _json.dumps(arg)))

    def enqueue(
        self,
        payload: Any,
        *,
        queue: str = "default",
        priority: int = 0,
        run_at: Optional[Time] = None,
        max_attempts: Optional[int] = None,
        name: Optional[str] = None,
        unique_key: Optional[str] = None,
        machine: Optional[Union[str, Mapping[str, Any]]] = None,
        region: Optional[Union[str, Sequence[str]]] = None,
    ) -> JobMap:
        """Enqueues one job (never waits for a machine) and returns it as stored.

        :param payload: anything JSON represents exactly; opaque to the core
        :param priority: lower runs first
        :param run_at: run no earlier than this (datetime, epoch seconds or RFC 3339)
        :param max_attempts: None = the queue's setting
        :param machine: a Fly size ("performance-2x", "shared-cpu-1x:1024") or
            {cpus, memory_mb, cpu_kind}; None = the queue's size
        :param region: region code(s); None = the queue's regions
        :raises flyjobs.ConfigError: a size Fly does not sell (nothing is written)
        :raises TypeError: the payload does not round-trip through JSON (nothing is written)
        :raises flyjobs.InvalidError: a bad field or an oversized payload (nothing is written)
        """
        fields = _json.job_fields(payload, queue, priority, run_at, max_attempts, name, unique_key, machine, region)
        return _json.loads(self._handle.native().enqueue(_json.dumps(fields)))  # type: ignore[no-any-return]

    def enqueue_many(self, jobs: Iterable[Mapping[str, Any]]) -> List[JobMap]:
        """Enqueues many jobs (each a dict of `enqueue`'s arguments) in one transaction: all or
        nothing. Returns them as stored, in order."""
        fields = [_json.job_fields(**dict(j)) for j in jobs]
        return _json.loads(self._handle.native().enqueue_many(_json.dumps(fields)))  # type: ignore[no-any-return]

    def job(self, id: int) -> Optional[JobMap]:
        """The stored job ("id", "queue", "name", "state", "attempts", "payload", "last_error",
        "run_at", ...), or None."""
        return self._call("job", int(id))  # type: ignore[no-any-return]

    def attempts(self, id: int) -> List[Dict[str, Any]]:
        """The failed runs of a job, oldest first (what the dashboard's job page shows): each
        with "attempt", "machine", "started_at", "ended_at", "outcome" (the state it went to:
        scheduled, ready, dead or discarded) and "error" ("class", "message", "backtrace")."""
        return self._call("attempts", int(id))  # type: ignore[no-any-return]

    def jobs(
        self,
        *,
        queue: Optional[str] = None,
        state: Optional[str] = None,
        name: Optional[str] = None,
        limit: int = 100,
        after_id: Optional[int] = None,
    ) -> List[JobMap]:
        """A page of jobs in id order; pass the last id as after_id for the next page. States:
        scheduled, ready, running, completed, dead, discarded."""
        return self._call("jobs", _admin_filter(queue, state, name, limit, after_id))  # type: ignore[no-any-return]

    def cancel(self, id: int) -> JobMap:
        """Cancels a job that has not run yet (ready or scheduled); ConflictError otherwise."""
        return self._call("cancel", int(id))  # type: ignore[no-any-return]

    def discard(self, id: int) -> JobMap:
        """Discards a waiting or dead job."""
        return self._call("discard", int(id))  # type: ignore[no-any-return]

    def retry(self, id: int) -> JobMap:
        """Runs a dead or discarded job again (ready, attempts reset)."""
        return self._call("retry", int(id))  # type: ignore[no-any-return]

    def clear(self, queue: str) -> int:
        """Deletes every waiting job (ready or scheduled) of a queue; returns how many."""
        return int(self._call("clear", str(queue)))

    def stats(self) -> List[Dict[str, Any]]:
        """Per queue: "queue", "ready", "scheduled", "running", "dead", ..."""
        return self._call("stats")  # type: ignore[no-any-return]

    def workers(self) -> List[Dict[str, Any]]:
        """Registered workers."""
        return self._call("workers")  # type: ignore[no-any-return]

    def machines(self) -> List[Dict[str, Any]]:
        """Worker machines as the Machines API reports them ("id", "state", ...)."""
        return self._call("machines")  # type: ignore[no-any-return]

    def dashboard(self, request: Dict[str, Any]) -> Dict[str, Any]:
        """Answers one request to the web dashboard (see `flyjobs.dashboard`): `request` has
        method, path, mount, query, headers, body (and read_only); the answer has "status",
        "headers" ([[name, value], ...]) and "body"."""
        return self._call("dashboard", request)  # type: ignore[no-any-return]

    def config(self) -> Dict[str, Any]:
        """The resolved settings (token and database password redacted)."""
        return self._call("config")  # type: ignore[no-any-return]

    def start_scaler(self) -> None:
        """Starts the embedded scaler in this process (idempotent; refused in a worker)."""
        self._call("start_scaler")

    def local_api_url(self) -> Optional[str]:
        """The local Machines API's base URL, once this client started it."""
        return self._call("local_api_url")  # type: ignore[no-any-return]

    def worker(
        self,
        *,
        queues: Union[Sequence[str], str, None] = None,
        concurrency: Optional[int] = None,
        wait: Union[float, str, None] = None,
        pool: Optional[str] = None,
    ) -> "Worker":
        """A worker in this process; options left None come from the env
        (FLYJOBS_WORKER_QUEUES, ...) or the settings of its queue. `wait` is idle seconds
        before it leaves, or "forever"."""
        from .worker import Worker

        if isinstance(wait, float) and wait == float("inf"):
            wait = "forever"
        options = {"queues": queues, "concurrency": concurrency, "wait": wait, "pool": pool}
        return Worker(self._handle.native().worker(_json.fields(options)))

    def close(self) -> None:
        """Closes the client (its pool; the scaler and the local Machines API if it started
        them). Idempotent."""
        self._handle.close()


class AsyncClient:
    """The asyncio twin of `Client`: every call is a coroutine; `async with` opens and closes.

    >>> async with flyjobs.AsyncClient(database_url="sqlite://jobs.db") as client:  # doctest: +SKIP
    ...     job = await client.enqueue({"n": 1})
    """

    def __init__(
        self,
        *,
        default_worker_command: Optional[Sequence[str]] = None,
        local_api_command: Optional[Sequence[str]] = None,
        **options: Any,
    ) -> None:
        """Nothing is opened until `open()`, `async with` or the first call (the parameters are
        `Client`'s)."""
        self._handle = _Handle(options, default_worker_command, local_api=local_api_command)

    @classmethod
    def _from_handle(cls, handle: _Handle) -> "AsyncClient":
        client = cls.__new__(cls)
        client._handle = handle
        return client

    async def open(self) -> "AsyncClient":
        """Opens the client now (a bad option raises `flyjobs.ConfigError`)."""
        await self._handle.anative()
        return self

    async def __aenter__(self) -> "AsyncClient":
        return await self.open()

    async def __aexit__(
        self,
        exc_type: "Optional[type[BaseException]]",
        exc: Optional[BaseException],
        tb: "Optional[TracebackType]",
    ) -> None:
        await self.aclose()

    async def _call(self, name: str, arg: Any = None) -> Any:
        native = await self._handle.anative()
        return _json.loads(await native.call_async(name, _json.dumps(arg)))

    async def enqueue(
        self,
        payload: Any,
        *,
        queue: str = "default",
        priority: int = 0,
        run_at: Optional[Time] = None,
        max_attempts: Optional[int] = None,
        name: Optional[str] = None,
        unique_key: Optional[str] = None,
        machine: Optional[Union[str, Mapping[str, Any]]] = None,
        region: Optional[Union[str, Sequence[str]]] = None,
    ) -> JobMap:
        """See `Client.enqueue`."""
        fields = _json.job_fields(payload, queue, priority, run_at, max_attempts, name, unique_key, machine, region)
        native = await self._handle.anative()
        return _json.loads(await native.enqueue_async(_json.dumps(fields)))  # type: ignore[no-any-return]

    async def enqueue_many(self, jobs: Iterable[Mapping[str, Any]]) -> List[JobMap]:
        """See `Client.enqueue_many`: all or nothing."""
        fields = [_json.job_fields(**dict(j)) for j in jobs]
        native = await self._handle.anative()
        return _json.loads(await native.enqueue_many_async(_json.dumps(fields)))  # type: ignore[no-any-return]

    async def job(self, id: int) -> Optional[JobMap]:
        return await self._call("job", int(id))  # type: ignore[no-any-return]

    async def attempts(self, id: int) -> List[Dict[str, Any]]:
        return await self._call("attempts", int(id))  # type: ignore[no-any-return]

    async def jobs(
        self,
        *,
        queue: Optional[str] = None,
        state: Optional[str] = None,
        name: Optional[str] = None,
        limit: int = 100,
        after_id: Optional[int] = None,
    ) -> List[JobMap]:
        return await self._call("jobs", _admin_filter(queue, state, name, limit, after_id))  # type: ignore[no-any-return]

    async def cancel(self, id: int) -> JobMap:
        return await self._call("cancel", int(id))  # type: ignore[no-any-return]

    async def discard(self, id: int) -> JobMap:
        return await self._call("discard", int(id))  # type: ignore[no-any-return]

    async def retry(self, id: int) -> JobMap:
        return await self._call("retry", int(id))  # type: ignore[no-any-return]

    async def clear(self, queue: str) -> int:
        return int(await self._call("clear", str(queue)))

    async def stats(self) -> List[Dict[str, Any]]:
        return await self._call("stats")  # type: ignore[no-any-return]

    async def workers(self) -> List[Dict[str, Any]]:
        return await self._call("workers")  # type: ignore[no-any-return]

    async def machines(self) -> List[Dict[str, Any]]:
        return await self._call("machines")  # type: ignore[no-any-return]

    async def dashboard(self, request: Dict[str, Any]) -> Dict[str, Any]:
        """`Client.dashboard`, as a coroutine."""
        return await self._call("dashboard", request)  # type: ignore[no-any-return]

    async def config(self) -> Dict[str, Any]:
        return await self._call("config")  # type: ignore[no-any-return]

    async def start_scaler(self) -> None:
        await self._call("start_scaler")

    async def local_api_url(self) -> Optional[str]:
        return await self._call("local_api_url")  # type: ignore[no-any-return]

    async def aclose(self) -> None:
        """Closes the client. Idempotent."""
        await self._handle.aclose()
