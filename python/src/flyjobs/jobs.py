"""`@flyjobs.job`: a function that runs in a worker machine.

The payload of its jobs is `{"function": "module:qualname", "args": [...], "kwargs": {...}}` and
the job's name is "module:qualname"; the worker imports the module and calls the function.
Arguments must round-trip through JSON: anything else raises TypeError naming the argument and
nothing is written.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import functools
import importlib
import inspect
import sys
import time
from typing import (
    Any,
    Callable,
    Dict,
    Generic,
    List,
    Mapping,
    Optional,
    Sequence,
    TypeVar,
    Union,
    cast,
    overload,
)

from . import _json

F = TypeVar("F", bound=Callable[..., Any])
R = TypeVar("R")

_REGISTRY: Dict[str, "JobFunction[Any]"] = {}


def registered_modules() -> List[str]:
    """Modules that define jobs, in registration order (the worker imports them)."""
    seen: Dict[str, None] = {}
    for name in _REGISTRY:
        seen.setdefault(name.split(":", 1)[0], None)
    return list(seen)


def _module_name(func: Callable[..., Any]) -> str:
    module = func.__module__
    if module == "__main__":
        # `python -m myapp.tasks` runs myapp.tasks as __main__: the worker imports it by its name.
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        if spec is not None and spec.name:
            return str(spec.name)
    return str(module)


class JobHandle:
    """An enqueued job: its id and, on demand, its stored state."""

    def __init__(self, job: Dict[str, Any], client: Any = None) -> None:
        self.id: int = int(job["id"])
        self.job: Dict[str, Any] = job
        self._client = client

    def __repr__(self) -> str:
        return f"<flyjobs.JobHandle id={self.id} name={self.job.get('name')!r} state={self.job.get('state')!r}>"

    def _sync_client(self) -> Any:
        from . import client as default_client

        return self._client if self._client is not None else default_client()

    def refresh(self) -> Dict[str, Any]:
        """Reloads the stored job (state, attempts, last_error, ...) and returns it."""
        job = self._sync_client().job(self.id)
        if job is not None:
            self.job = job
        return self.job

    def status(self) -> str:
        """The job's current state: scheduled, ready, running, completed, dead or discarded."""
        return str(self.refresh()["state"])

    async def arefresh(self) -> Dict[str, Any]:
        """`refresh` for asyncio."""
        from . import async_client

        job = await async_client().job(self.id)
        if job is not None:
            self.job = job
        return self.job

    async def astatus(self) -> str:
        """`status` for asyncio."""
        return str((await self.arefresh())["state"])


class JobFunction(Generic[R]):
    """What `@flyjobs.job` makes of a function: still callable as before (runs it here), plus
    `enqueue`, `enqueue_at`, `enqueue_in` and their asyncio twins `aenqueue*`."""

    def __init__(
        self,
        func: Callable[..., R],
        queue: str = "default",
        priority: int = 0,
        max_attempts: Optional[int] = None,
        machine: Optional[Union[str, Mapping[str, Any]]] = None,
        region: Optional[Union[str, Sequence[str]]] = None,
    ) -> None:
        if not callable(func):
            raise TypeError(f"@flyjobs.job decorates a function, got {func!r}")
        qualname = func.__qualname__
        if "<locals>" in qualname or "<lambda>" in qualname:
            raise TypeError(
                f"@flyjobs.job needs a module-level function (the worker imports it by name), got {qualname}"
            )
        self.func = func
        self.name = f"{_module_name(func)}:{qualname}"
        self.queue = queue
        self.priority = priority
        self.max_attempts = max_attempts
        self.machine = machine
        self.region = region
        self.is_async = inspect.iscoroutinefunction(func)
        functools.update_wrapper(self, func)
        _REGISTRY[self.name] = self

    def __call__(self, *args: Any, **kwargs: Any) -> R:
        return self.func(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<flyjobs.job {self.name} queue={self.queue!r}>"

    def _fields(self, run_at: Optional[_json.Time], args: Any, kwargs: Dict[str, Any]) -> Dict[str, Any]:
        for i, a in enumerate(args):
            _json.check_round_trip(f"argument {i} of {self.name}", a)
        for k, v in kwargs.items():
            _json.check_round_trip(f"argument {k!r} of {self.name}", v)
        payload = {"function": self.name, "args": list(args), "kwargs": dict(kwargs)}
        return _json.job_fields(
            payload,
            queue=self.queue,
            priority=self.priority,
            run_at=run_at,
            max_attempts=self.max_attempts,
            name=self.name,
            machine=self.machine,
            region=self.region,
        )

    def _enqueue(self, run_at: Optional[_json.Time], args: Any, kwargs: Dict[str, Any]) -> JobHandle:
        from . import client

        fields = self._fields(run_at, args, kwargs)
        c = client()
        stored = c._handle.native().enqueue(_json.dumps(fields))
        return JobHandle(_json.loads(stored))

    async def _aenqueue(self, run_at: Optional[_json.Time], args: Any, kwargs: Dict[str, Any]) -> JobHandle:
        from . import async_client

        fields = self._fields(run_at, args, kwargs)
        native = await async_client()._handle.anative()
        stored = await native.enqueue_async(_json.dumps(fields))
        return JobHandle(_json.loads(stored))

    def enqueue(self, *args: Any, **kwargs: Any) -> JobHandle:
        """Runs `func(*args, **kwargs)` in a worker machine as soon as one is free."""
        return self._enqueue(None, args, kwargs)

    def enqueue_at(self, when: Union[_dt.datetime, float], *args: Any, **kwargs: Any) -> JobHandle:
        """Runs it no earlier than `when` (a datetime, or seconds since the epoch)."""
        return self._enqueue(when, args, kwargs)

    def enqueue_in(self, delay: Union[_dt.timedelta, float], *args: Any, **kwargs: Any) -> JobHandle:
        """Runs it no earlier than `delay` (a timedelta, or seconds) from now."""
        return self._enqueue(_in(delay), args, kwargs)

    async def aenqueue(self, *args: Any, **kwargs: Any) -> JobHandle:
        """`enqueue` for asyncio."""
        return await self._aenqueue(None, args, kwargs)

    async def aenqueue_at(self, when: Union[_dt.datetime, float], *args: Any, **kwargs: Any) -> JobHandle:
        """`enqueue_at` for asyncio."""
        return await self._aenqueue(when, args, kwargs)

    async def aenqueue_in(self, delay: Union[_dt.timedelta, float], *args: Any, **kwargs: Any) -> JobHandle:
        """`enqueue_in` for asyncio."""
        return await self._aenqueue(_in(delay), args, kwargs)


def _in(delay: Union[_dt.timedelta, float]) -> float:
    seconds = delay.total_seconds() if isinstance(delay, _dt.timedelta) else float(delay)
    return time.time() + seconds


@overload
def job(func: Callable[..., R], /) -> JobFunction[R]: ...
@overload
def job(
    *,
    queue: str = "default",
    priority: int = 0,
    max_attempts: Optional[int] = None,
    machine: Optional[Union[str, Mapping[str, Any]]] = None,
    region: Optional[Union[str, Sequence[str]]] = None,
) -> Callable[[Callable[..., R]], JobFunction[R]]: ...
def job(
    func: Optional[Callable[..., R]] = None,
    /,
    *,
    queue: str = "default",
    priority: int = 0,
    max_attempts: Optional[int] = None,
    machine: Optional[Union[str, Mapping[str, Any]]] = None,
    region: Optional[Union[str, Sequence[str]]] = None,
) -> Union[JobFunction[R], Callable[[Callable[..., R]], JobFunction[R]]]:
    """Makes a module-level function (sync or `async def`) a job:

    >>> @flyjobs.job(queue="mail", max_attempts=5)      # doctest: +SKIP
    ... def send_welcome(user_id: int) -> None: ...
    >>> send_welcome.enqueue(42).status()               # doctest: +SKIP
    'ready'

    :param queue: the queue its jobs go to
    :param priority: lower runs first (the core's order)
    :param max_attempts: runs allowed in total; None = the queue's setting
    :param machine: the machine size its runs get (``"performance-2x"``, ``"shared-cpu-1x:1024"``
        or ``{"cpus": 2, "memory_mb": 4096}``); None = the queue's
    :param region: region code(s) for its machine (``"ams"``, ``["ams", "fra"]``); None = the queue's
    """

    def wrap(f: Callable[..., R]) -> JobFunction[R]:
        return JobFunction(
            f, queue=queue, priority=priority, max_attempts=max_attempts, machine=machine, region=region
        )

    return wrap(func) if func is not None else wrap


def resolve(name: str) -> Callable[..., Any]:
    """The function of a job name "module:qualname" (importing the module), unwrapped."""
    module_name, sep, qualname = name.partition(":")
    if not sep or not module_name or not qualname:
        raise LookupError(f"job function {name!r} is not of the form module:qualname")
    registered = _REGISTRY.get(name)
    if registered is not None:
        return registered.func
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if isinstance(obj, JobFunction):
        return obj.func
    if not callable(obj):
        raise LookupError(f"job function {name!r} is not callable")
    return cast(Callable[..., Any], obj)


def is_coroutine_function(func: Callable[..., Any]) -> bool:
    return asyncio.iscoroutinefunction(func) or inspect.iscoroutinefunction(func)


