"""The Python job of the cross-language test. Its worker is the package's own, `python -m flyjobs
worker --import poly_py --queues poly-py`; its tool is poly_py_tool.py."""

from __future__ import annotations

import json
import os

import flyjobs


@flyjobs.job(queue="poly-py")
def record(token: str) -> None:
    with open("out.jsonl", "a") as f:
        f.write(json.dumps({"lang": "python", "token": token, "pid": os.getpid(), "worker": os.environ.get("FLYJOBS_WORKER")}) + "\n")

