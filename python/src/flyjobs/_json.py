"""JSON for the native module, and the round-trip check every job argument must pass."""

from __future__ import annotations

import datetime as _dt
import json
from typing import Any, Dict, Mapping, Optional, Sequence, Union

Time = Union[_dt.datetime, float, int, str]


def dumps(value: Any) -> str:
    """JSON text of `value` for the native module, exactly (payloads, job ids, ...)."""
    return json.dumps(value, allow_nan=False, separators=(",", ":"))


def fields(value: Mapping[str, Any]) -> str:
    """JSON text of a map of fields (a job, a filter, worker options): None values are left
    out so the core applies its default."""
    return dumps({str(k): v for k, v in value.items() if v is not None})


def options(value: Mapping[str, Any]) -> str:
    """JSON text of an options map: None values are left out at every level (queue settings
    too) so the core applies the env var and the default; durations may be timedeltas."""
    return dumps(_options(value))


def _options(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _options(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_options(v) for v in value]
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    return value


def time_arg(when: Time) -> Union[float, int, str]:
    """A run_at for the core: seconds since the epoch (a naive datetime is local time, as
    `datetime.timestamp` reads it) or an RFC 3339 string."""
    if isinstance(when, _dt.datetime):
        return when.timestamp()
    if isinstance(when, (int, float, str)) and not isinstance(when, bool):
        return when
    raise TypeError(f"run_at must be a datetime, seconds since the epoch or an RFC 3339 string, got {when!r}")


def check_round_trip(what: str, value: Any) -> Any:
    """`value` if it survives JSON unchanged, else TypeError naming `what` (an argument that
    would come back different in the worker: a tuple, a set, a datetime, a non-string key...)."""
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{what} cannot be sent to a job: {e} (arguments must round-trip through JSON)") from None
    back = json.loads(text)
    if not _same(value, back):
        raise TypeError(
            f"{what} = {value!r} does not round-trip through JSON (it would arrive as {back!r}); "
            "pass lists, dicts with string keys, str, int, float, bool or None"
        )
    return value


def _same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return bool(a == b)


def loads(text: str) -> Any:
    return json.loads(text)


def job_fields(
    payload: Any,
    queue: str = "default",
    priority: int = 0,
    run_at: Optional[Time] = None,
    max_attempts: Optional[int] = None,
    name: Optional[str] = None,
    unique_key: Optional[str] = None,
    machine: Optional[Union[str, Mapping[str, Any]]] = None,
    region: Optional[Union[str, Sequence[str]]] = None,
) -> Dict[str, Any]:
    """A job map for the core (NewJob::from_value)."""
    check_round_trip("payload", payload)
    job = {
        "queue": str(queue),
        "payload": payload,
        "priority": priority,
        "run_at": None if run_at is None else time_arg(run_at),
        "max_attempts": max_attempts,
        "name": name,
        "unique_key": unique_key,
        "machine": None if machine is None else (machine if isinstance(machine, str) else dict(machine)),
        "region": None if region is None else (region if isinstance(region, str) else list(region)),
    }
    # Fields left None take the core's default (the queue's max_attempts, now, ...).
    return {k: v for k, v in job.items() if v is not None}
