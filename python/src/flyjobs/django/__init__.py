"""A Django Tasks backend (Django >= 6) running tasks in Fly Machines through flyjobs.

    # settings.py
    INSTALLED_APPS = [..., "flyjobs.django"]          # for `manage.py flyjobs_worker`
    TASKS = {
        "default": {
            "BACKEND": "flyjobs.django.FlyMachineBackend",
            "QUEUES": ["default", "mail"],
            # flyjobs options (the core's names; FLYJOBS_* env vars fill the rest), plus
            # "max_attempts" (runs per task, default 1: Django reports a failed run as FAILED)
            # and "scaler" (run the embedded scaler in this process; default: yes, not in workers)
            "OPTIONS": {"queues": {"mail": {"max_machines": 2}}},
        }
    }

Priorities: Django's -100..100 (higher runs sooner) become the core's order (lower runs first)
by negation. `run_after` is the job's run_at. A task's result (`get_result`) is the stored job:
status, errors (type and traceback) and return value (kept as the job's result).
"""

from __future__ import annotations

import os
import sys
from datetime import datetime, timezone as dt_timezone
from typing import Any, Dict, List, Optional

from django.tasks.backends.base import BaseTaskBackend
from django.tasks.base import Task, TaskError, TaskResult, TaskResultStatus
from django.tasks.exceptions import TaskResultDoesNotExist
from django.tasks.signals import task_enqueued
from django.utils.json import normalize_json

from .. import logs
from ..client import AsyncClient, Client, _Handle

__all__ = ["FlyMachineBackend"]

STATUS = {
    "scheduled": TaskResultStatus.READY,
    "ready": TaskResultStatus.READY,
    "running": TaskResultStatus.RUNNING,
    "completed": TaskResultStatus.SUCCESSFUL,
    "dead": TaskResultStatus.FAILED,
    "discarded": TaskResultStatus.FAILED,
}


def _time(value: Optional[str]) -> Optional[datetime]:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(dt_timezone.utc)


def _error(failure: Dict[str, Any]) -> TaskError:
    cls = str(failure.get("class") or "Exception")
    path = cls if "." in cls else f"builtins.{cls}"
    lines = [f"  {line}" for line in reversed(failure.get("backtrace") or [])]
    traceback = "Traceback (most recent call last):\n" + "\n".join(lines) + f"\n{cls}: {failure.get('message', '')}\n"
    return TaskError(exception_class_path=path, traceback=traceback)


def worker_command() -> List[str]:
    """What worker machines of a Django project run: this interpreter's `-m django
    flyjobs_worker` with the project's settings module, from the current directory."""
    command = [sys.executable, "-m", "django", "flyjobs_worker"]
    module = os.environ.get("DJANGO_SETTINGS_MODULE")
    if module:
        command += ["--settings", module]
    return command + ["--pythonpath", os.getcwd()]


class FlyMachineBackend(BaseTaskBackend):  # type: ignore[misc]
    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: Dict[str, Any]) -> None:
        super().__init__(alias, params)
        options = dict(self.options)
        self.max_attempts = int(options.pop("max_attempts", 1))
        scaler = options.pop("scaler", None)
        self._scaler = True if scaler is None else bool(scaler)
        # The worker_command option (FLYJOBS_WORKER_COMMAND), when set, wins over this default.
        self._handle = _Handle(
            {k: v for k, v in options.items() if v is not None},
            worker_command(),
        )

    # -- the flyjobs clients of this backend --------------------------------------------------

    def _prepare(self) -> _Handle:
        # Decided when the client opens: a worker process (FLYJOBS_WORKER) never scales.
        self._handle.start_scaler = self._scaler and "FLYJOBS_WORKER" not in os.environ
        logs.start()
        return self._handle

    def client(self) -> Client:
        """The flyjobs client of this backend (opened on first use, again after a fork)."""
        handle = self._prepare()
        handle.native()
        return Client._from_handle(handle)

    def async_client(self) -> AsyncClient:
        """The same for asyncio code."""
        return AsyncClient._from_handle(self._prepare())

    # -- enqueue ------------------------------------------------------------------------------

    def _job_fields(self, task: Task, args: Any, kwargs: Any) -> Dict[str, Any]:
        self.validate_task(task)
        name = f"{task.func.__module__}:{task.func.__qualname__}"
        payload = {
            "function": name,
            "args": normalize_json(list(args)),
            "kwargs": normalize_json(dict(kwargs)),
            "django": {"backend": self.alias, "takes_context": task.takes_context},
        }
        run_after = task.run_after
        if run_after is not None and run_after.tzinfo is None:
            from django.utils import timezone

            run_after = timezone.make_aware(run_after)
        return {
            "payload": payload,
            "queue": task.queue_name,
            "priority": -int(task.priority),
            "run_at": run_after,
            "max_attempts": self.max_attempts,
            "name": name,
        }

    def enqueue(self, task: Task, args: Any, kwargs: Any) -> TaskResult:
        fields = self._job_fields(task, args, kwargs)
        job = self.client().enqueue(**fields)
        result = self._result(job, task)
        task_enqueued.send(type(self), task_result=result)
        return result

    async def aenqueue(self, task: Task, args: Any, kwargs: Any) -> TaskResult:
        fields = self._job_fields(task, args, kwargs)
        job = await self.async_client().enqueue(**fields)
        result = self._result(job, task)
        await task_enqueued.asend(type(self), task_result=result)
        return result

    # -- results ------------------------------------------------------------------------------

    def get_result(self, result_id: str) -> TaskResult:
        return self._result(self._job(self.client().job(self._id(result_id)), result_id))

    async def aget_result(self, result_id: str) -> TaskResult:
        return self._result(self._job(await self.async_client().job(self._id(result_id)), result_id))

    @staticmethod
    def _id(result_id: Any) -> int:
        try:
            return int(result_id)
        except (TypeError, ValueError):
            raise TaskResultDoesNotExist(result_id) from None

    def _job(self, job: Optional[Dict[str, Any]], result_id: Any) -> Dict[str, Any]:
        payload = (job or {}).get("payload")
        if not isinstance(payload, dict) or payload.get("django", {}).get("backend") != self.alias:
            raise TaskResultDoesNotExist(result_id)
        return job  # type: ignore[return-value]

    def _result(self, job: Dict[str, Any], task: Optional[Task] = None) -> TaskResult:
        payload = job["payload"]
        if task is None:
            task = task_of(payload["function"])
        status = STATUS[job["state"]]
        errors = [_error(job["last_error"])] if job.get("last_error") else []
        started = _time(job.get("started_at"))
        owner = job.get("lease_owner") or ""
        result = TaskResult(
            task=task,
            id=str(job["id"]),
            status=status,
            enqueued_at=_time(job.get("created_at")),
            started_at=started,
            finished_at=_time(job.get("finished_at")) if status in (TaskResultStatus.SUCCESSFUL, TaskResultStatus.FAILED) else None,
            last_attempted_at=started,
            args=payload.get("args") or [],
            kwargs=payload.get("kwargs") or {},
            backend=self.alias,
            errors=errors,
            worker_ids=[owner] * int(job.get("attempts") or 0),
        )
        if status == TaskResultStatus.SUCCESSFUL:
            object.__setattr__(result, "_return_value", job.get("result"))
        return result


def task_of(name: str) -> Task:
    """The Django Task object of a job name "module:qualname"."""
    module, _, qualname = name.partition(":")
    import importlib

    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, Task):
        raise LookupError(f"{name} is not a Django task (decorate it with @django.tasks.task)")
    return obj


