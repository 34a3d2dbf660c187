"""Errors flyjobs raises: `FlyJobsError` and one subclass per core error kind.

The native module picks the class from the core error's kind (one mapping, in
bindings/python/src/error.rs) and sets the attributes below from the core's error view. A job's
own exception is never wrapped in one of these: the worker records it on the job as data.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Type


class FlyJobsError(Exception):
    """Base class of every error flyjobs raises."""

    #: the stable snake_case kind shared by every binding ("not_found", ...)
    kind: str = "error"
    #: whether retrying the same operation may succeed
    retryable: bool = False
    #: HTTP status of the Machines API answer behind it, if any
    status: Optional[int] = None
    #: the Machines API's fly-request-id, if it sent one (quote it to Fly support)
    request_id: Optional[str] = None
    #: the job concerned, if any
    job_id: Optional[int] = None
    #: messages of the underlying causes, outermost first
    causes: List[str] = []

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class ConfigError(FlyJobsError):
    kind = "config"


class AuthError(FlyJobsError):
    kind = "auth"


class NotFoundError(FlyJobsError):
    kind = "not_found"


class ConflictError(FlyJobsError):
    kind = "conflict"


class RateLimitedError(FlyJobsError):
    kind = "rate_limited"


class CapacityError(FlyJobsError):
    kind = "capacity"


class TimeoutError(FlyJobsError):  # noqa: A001 - flyjobs.TimeoutError, as in the vectors
    kind = "timeout"


class InvalidError(FlyJobsError):
    kind = "invalid"


class ApiError(FlyJobsError):
    kind = "api"


class TransportError(FlyJobsError):
    kind = "transport"


class StoreError(FlyJobsError):
    kind = "store"


class SerializationError(FlyJobsError):
    kind = "serialization"


class ShutdownError(FlyJobsError):
    kind = "shutdown"


#: kind -> exception class (the order follows the core's ErrorKind::ALL)
ERROR_CLASSES: Dict[str, Type[FlyJobsError]] = {
    cls.kind: cls
    for cls in (
        ConfigError,
        AuthError,
        NotFoundError,
        ConflictError,
        RateLimitedError,
        CapacityError,
        TimeoutError,
        InvalidError,
        ApiError,
        TransportError,
        StoreError,
        SerializationError,
        ShutdownError,
    )
}


def error_class_for(kind: str) -> Type[FlyJobsError]:
    """The exception class for a core error kind (`FlyJobsError` for one this package does not know)."""
    return ERROR_CLASSES.get(kind, FlyJobsError)
