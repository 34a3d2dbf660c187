"""flyjobs: background jobs on on-demand Fly Machines. A Rust core (queue, retries, scaler,
worker loop) with this package as its Python face.

>>> import flyjobs                                          # doctest: +SKIP
>>> @flyjobs.job(queue="mail")
... def send_welcome(user_id: int) -> None: ...
>>> send_welcome.enqueue(42)                                # runs in a worker machine

Settings: `flyjobs.configure(database_url=..., queues={...})` with the core's option names (the
same as Ruby's and the env vars'), or the env vars themselves (FLYJOBS_DATABASE_URL, ...).
"""

from __future__ import annotations

import atexit
import json
import os
import threading
from typing import Any, Dict, List, Optional

from . import _native, logs
from .client import AsyncClient, Client, default_worker_command, _Handle
from .errors import (
    ApiError,
    AuthError,
    CapacityError,
    ConfigError,
    ConflictError,
    FlyJobsError,
    InvalidError,
    NotFoundError,
    RateLimitedError,
    SerializationError,
    ShutdownError,
    StoreError,
    TimeoutError,
    TransportError,
    error_class_for,
)
from .jobs import JobFunction, JobHandle, job
from .worker import Job, Worker

__version__ = "0.1.0"

__all__ = [
    "ApiError",
    "AsyncClient",
    "AuthError",
    "CapacityError",
    "Client",
    "ConfigError",
    "ConflictError",
    "FlyJobsError",
    "InvalidError",
    "Job",
    "JobFunction",
    "JobHandle",
    "NotFoundError",
    "RateLimitedError",
    "SerializationError",
    "ShutdownError",
    "StoreError",
    "TimeoutError",
    "TransportError",
    "Worker",
    "async_client",
    "client",
    "configure",
    "default_worker_command",
    "error_class_for",
    "job",
    "option_specs",
    "reset",
    "stopping",
    "worker_process",
]

_config: Dict[str, Any] = {}
_scaler: Optional[bool] = None
_default: Optional[_Handle] = None
_lock = threading.Lock()
_lock_pid = os.getpid()


def option_specs() -> Dict[str, List[Dict[str, Any]]]:
    """The core's settings vocabulary: "options", "queue_settings", "worker_options", each a
    list of {name, env, accepts, default, doc}."""
    return json.loads(_native.option_specs())  # type: ignore[no-any-return]


#: The core's option names (the one list lives in the core); `configure` also takes `scaler`.
OPTIONS: List[str] = [s["name"] for s in option_specs()["options"]]


def _resolve_config(options: Dict[str, Any], env: Dict[str, str]) -> Dict[str, Any]:
    """The settings `options` resolve to over `env` (standing in for os.environ): the hook the
    shared vectors (tests/vectors/options.json) run through."""
    from . import _json

    return json.loads(_native.resolve_config(_json.options(options), _json.dumps(env)))  # type: ignore[no-any-return]


def configure(*, scaler: Optional[bool] = None, **options: Any) -> None:
    """Sets the process-wide settings (the core's option names: database_url, queues,
    max_machines, worker_command, ...; None leaves one to its env var or default) and closes the
    process-wide client so the next use opens one with them. Checked now: a bad name or value
    raises `flyjobs.ConfigError` naming it and what it accepts.

    :param scaler: run the embedded scaler in this process (default: yes, unless this process is
        a worker)
    """
    global _config, _scaler
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ConfigError(
            f"unknown flyjobs option {', '.join(unknown)} (known: {', '.join(OPTIONS + ['scaler'])})"
        )
    merged = {**_config, **options}
    merged = {k: v for k, v in merged.items() if v is not None}
    _resolve_config(merged, dict(os.environ))
    reset()
    _config = merged
    if scaler is not None:
        _scaler = bool(scaler)


def worker_process() -> bool:
    """Whether this process is a worker (`python -m flyjobs worker` sets FLYJOBS_WORKER=1): a
    worker never runs the scaler."""
    return "FLYJOBS_WORKER" in os.environ


def _start_scaler() -> bool:
    if worker_process():
        return False
    return True if _scaler is None else _scaler


def _default_handle() -> _Handle:
    global _default, _lock, _lock_pid
    handle = _default
    if handle is not None:
        return handle
    if _lock_pid != os.getpid():
        _lock, _lock_pid = threading.Lock(), os.getpid()
    with _lock:
        if _default is None:
            logs.start()
            _default = _Handle(_config, None, start_scaler=_start_scaler())
            _close_at_exit()
        return _default


_closing_at_exit_pid = 0


def _close_at_exit() -> None:
    """When this process exits (a gunicorn worker told to stop, Ctrl-C in `runserver`), close
    its client: the scaler stops and gives up the leader lock at once (the next process does
    not wait for it to expire), and this process stops counting as a user of the shared local
    Machines API. Registered once per process (again in a child after a fork)."""
    global _closing_at_exit_pid
    pid = os.getpid()
    if _closing_at_exit_pid == pid:
        return
    _closing_at_exit_pid = pid

    def close() -> None:
        if os.getpid() == pid:
            reset()

    atexit.register(close)


def client() -> Client:
    """The process-wide client, opened on first use with `configure`'s settings (again in a
    child after a fork). In an app process it also starts the embedded scaler; never in a
    worker."""
    handle = _default_handle()
    handle.native()
    return Client._from_handle(handle)


def async_client() -> AsyncClient:
    """The process-wide client for asyncio code (the same connection as `client()`)."""
    return AsyncClient._from_handle(_default_handle())


def reset() -> None:
    """Closes the process-wide client if this process opened it (tests, reconfiguration)."""
    global _default
    handle, _default = _default, None
    if handle is not None:
        handle.close()


def stopping() -> bool:
    """Whether this process's worker was asked to quiet or stop (a long job may check it and
    cut its work short)."""
    from . import worker

    current = worker.current
    return current.stopping if current is not None else False
