"""One process of a multi-process app (what each gunicorn worker is): configures flyjobs, opens
the process-wide client (which starts the embedded scaler and joins the app's shared local
Machines API), prints {"pid", "api"}, then follows commands on stdin:

- `enqueue TAG N`: enqueues `pyjobs.echo(TAG, i)` for i in 0..N-1, then prints "enqueued";
- end of input: exits normally (atexit closes the client: scaler stopped, leader lock released,
  this process no longer counts as a user of the local API).

Settings from the environment: APP_DATABASE_URL (unset: the embedded SQLite default in the
current directory), FLYJOBS_TEST_QUEUE (the jobs' queue, in pyjobs)."""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.getcwd())

import flyjobs  # noqa: E402
import pyjobs  # noqa: E402

flyjobs.configure(
    database_url=os.environ.get("APP_DATABASE_URL") or None,
    # Machines idle for a minute before leaving: still up when the last process leaves, so the
    # test sees the local API stop them.
    queues={"*": {"wait": "60s", "concurrency": 2, "max_machines": 2}},
)
client = flyjobs.client()
print(json.dumps({"pid": os.getpid(), "api": client.local_api_url()}), flush=True)
for line in sys.stdin:
    words = line.split()
    if words and words[0] == "enqueue":
        tag, count = words[1], int(words[2])
        for i in range(count):
            pyjobs.echo.enqueue(tag, i)
        print("enqueued", flush=True)
