"""The cross-language test's Python tool: `python poly_py_tool.py enqueue TOKEN` or `admin` (one
JSON line: the jobs and stats this language's client sees)."""

from __future__ import annotations

import json
import sys

import flyjobs
from poly_py import record

command = sys.argv[1]
flyjobs.configure(scaler=False)  # a tool: FLYJOBS_DATABASE_URL, no scaler
client = flyjobs.client()
if command == "enqueue":
    handle = record.enqueue(sys.argv[2])
    print(json.dumps({"id": handle.id}))
elif command == "admin":
    print(json.dumps({"jobs": client.jobs(limit=1000), "stats": client.stats()}))
