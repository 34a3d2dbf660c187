"""Jobs of the test app. They run in worker machines (local processes started by the embedded
emulator in the app directory) and write what they saw to out.jsonl there."""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any, Dict

import flyjobs

QUEUE = os.environ.get("FLYJOBS_TEST_QUEUE", "pytest")


def record(tag: str, **fields: Any) -> None:
    line: Dict[str, Any] = {"tag": tag, "pid": os.getpid(), "worker": os.environ.get("FLYJOBS_WORKER"), **fields}
    with open("out.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")


@flyjobs.job(queue=QUEUE)
def echo(tag: str, *args: Any, **kwargs: Any) -> None:
    record(tag, args=list(args), kwargs=kwargs, machine=os.environ.get("FLY_MACHINE_ID"))


@flyjobs.job(queue=QUEUE, machine="shared-cpu-1x:512")
def sized(tag: str) -> None:
    record(tag, memory_mb=os.environ.get("FLY_VM_MEMORY_MB"))


@flyjobs.job(queue=QUEUE, machine="huge-9x")
def missized(tag: str) -> None:
    record(tag)


@flyjobs.job(queue=QUEUE)
async def async_echo(tag: str, value: Any) -> None:
    await asyncio.sleep(0.05)
    loop = asyncio.get_running_loop()
    record(tag, value=value, in_loop=loop.is_running())


def attempts_so_far(tag: str) -> int:
    try:
        with open(f"attempts-{tag}") as f:
            return int(f.read() or 0)
    except FileNotFoundError:
        return 0


@flyjobs.job(queue=QUEUE, max_attempts=3)
def flaky(tag: str, failures: int) -> str:
    """Fails `failures` times, then succeeds."""
    n = attempts_so_far(tag) + 1
    with open(f"attempts-{tag}", "w") as f:
        f.write(str(n))
    if n <= failures:
        raise ValueError(f"{tag}: attempt {n} fails on purpose")
    record(tag, attempt=n)
    return "ok"


@flyjobs.job(queue=QUEUE, max_attempts=2)
def doomed(tag: str) -> None:
    raise RuntimeError(f"{tag}: always fails")


class Steps:
    @staticmethod
    @flyjobs.job(queue=QUEUE)
    def nested(tag: str) -> None:
        record(tag, nested=True)


@flyjobs.job(queue=QUEUE)
def sleeper(tag: str, seconds: float) -> None:
    """First run: says so, then sleeps (a SIGTERM lands mid-job). Later runs finish at once."""
    marker = f"sleeper-{tag}"
    if os.path.exists(marker):
        record(tag, run="again")
        return
    with open(marker, "w") as f:
        f.write(str(os.getpid()))
    record(tag, run="first")
    time.sleep(seconds)
    record(tag, run="first finished")
