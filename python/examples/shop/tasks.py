"""Jobs of the example shop: run them with `python -m flyjobs worker --import shop.tasks`."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Dict, List

import flyjobs


@flyjobs.job(queue="mail", max_attempts=5)
def send_receipt(order_id: int, email: str) -> None:
    print(f"receipt for order {order_id} to {email}")


@flyjobs.job(queue="images", priority=-1)
async def make_thumbnails(image_id: int, sizes: List[int]) -> Dict[str, int]:
    await asyncio.sleep(0)
    return {"image": image_id, "made": len(sizes)}


def checkout(order_id: int, email: str) -> int:
    handle: flyjobs.JobHandle = send_receipt.enqueue(order_id, email)
    send_receipt.enqueue_in(dt.timedelta(days=1), order_id, email)
    if handle.status() == "dead":
        raise RuntimeError("receipt failed")
    return handle.id


async def upload(image_id: int) -> str:
    handle = await make_thumbnails.aenqueue(image_id, [64, 256])
    return await handle.astatus()


def admin() -> int:
    with flyjobs.Client(queues={"mail": {"max_machines": 2, "pool": "suspend"}}) as client:
        try:
            client.cancel(1)
        except flyjobs.ConflictError as e:
            print(e.kind, e.retryable, e.job_id)
        dead = client.jobs(queue="mail", state="dead", limit=10)
        return client.clear("mail") + len(dead)


async def admin_async() -> int:
    async with flyjobs.AsyncClient() as client:
        stats = await client.stats()
        return len(stats)
