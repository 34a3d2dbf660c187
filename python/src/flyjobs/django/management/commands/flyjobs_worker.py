"""`python manage.py flyjobs_worker`: what a Django project's worker machines run. Runs the
tasks of one Tasks backend (default: "default") from the queue until idle (--wait) or SIGTERM."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.tasks import task_backends
from django.tasks.base import TaskContext
from django.tasks.signals import task_finished, task_started
from django.utils.json import normalize_json

from flyjobs.cli import run_worker
from flyjobs.django import FlyMachineBackend, task_of
from flyjobs.worker import Job

USAGE = "manage.py flyjobs_worker [--backend ALIAS] [--queues a,b] [--wait SECONDS|forever] [--concurrency N] [--pool MODE]"


class Command(BaseCommand):
    help = "Run Django tasks from the flyjobs queue (what worker machines run)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--backend", default="default", help="the TASKS alias (default: default)")
        parser.add_argument("--queues", help="comma-separated queues to serve")
        parser.add_argument("--wait", help="idle seconds before exiting, or forever")
        parser.add_argument("--concurrency", type=int, help="tasks at once")
        parser.add_argument("--pool", help="none, stop or suspend (set by the scaler)")

    def handle(self, *args: Any, **options: Any) -> None:
        import os

        os.environ["FLYJOBS_WORKER"] = "1"
        backend = task_backends[options["backend"]]
        if not isinstance(backend, FlyMachineBackend):
            raise SystemExit(f"flyjobs_worker: TASKS[{options['backend']!r}] is not flyjobs.django.FlyMachineBackend")
        queues = [q.strip() for q in options["queues"].split(",") if q.strip()] if options["queues"] else None

        def perform(job: Job) -> Any:
            payload = job.payload
            task = task_of(payload["function"])
            client = backend.client()
            result = backend._result(client.job(job.id) or {}, task)
            task_started.send(type(backend), task_result=result)
            call_args = list(payload.get("args") or [])
            if payload.get("django", {}).get("takes_context"):
                call_args.insert(0, TaskContext(task_result=result))
            try:
                value = normalize_json(task.call(*call_args, **(payload.get("kwargs") or {})))
            finally:
                task_finished.send(type(backend), task_result=result)
            return value

        run_worker(
            imports=[],
            queues=queues,
            wait=options["wait"],
            concurrency=options["concurrency"],
            pool=options["pool"],
            client=backend.client,
            perform=perform,
            usage=USAGE,
        )
