import asyncio
import os

from django.tasks import task


@task
def add(a, b):
    return {"sum": a + b, "pid": os.getpid(), "worker": os.environ.get("FLYJOBS_WORKER")}


@task(queue_name="mail", priority=10)
def send(to):
    return f"sent to {to}"


@task
async def slow_double(x):
    await asyncio.sleep(0.05)
    return x * 2


@task
def explode(why):
    raise ValueError(f"explode: {why}")


@task(takes_context=True)
def whoami(context, tag):
    return {"tag": tag, "attempt": context.attempt, "id": context.task_result.id}
