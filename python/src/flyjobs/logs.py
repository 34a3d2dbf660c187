"""The core's log records (the scaler's warnings, a worker that cannot boot, ...) written to
Python `logging` under the logger "flyjobs". The core never calls into Python from its own
threads: one daemon thread per process drains its records (GIL released while it waits) and
logs them. Level from FLYJOBS_LOG (a Rust filter such as `info` or `flyjobs=debug`), else info.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from typing import Optional

from . import _native

logger = logging.getLogger("flyjobs")

LEVELS = {
    "error": logging.ERROR,
    "warn": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": logging.DEBUG,
}

_pid: Optional[int] = None
_lock = threading.Lock()


def start() -> None:
    """Starts forwarding in this process (again after a fork: the thread does not survive it)."""
    global _pid, _lock
    pid = os.getpid()
    if _pid == pid:
        return
    if _pid is not None:
        _lock = threading.Lock()
    with _lock:
        if _pid == pid:
            return
        _native.logs_install(os.environ.get("FLYJOBS_LOG", "info"))
        _pid = pid
        threading.Thread(target=_forward, name="flyjobs-logs", daemon=True).start()


def _forward() -> None:
    while True:
        drain(1.0)


def drain(seconds: float = 0.0) -> int:
    """Logs what the core logged, waiting up to `seconds` for something; returns the count."""
    try:
        batch = json.loads(_native.logs_drain(float(seconds)))
        for r in batch["records"]:
            logger.log(LEVELS.get(r["level"], logging.INFO), "%s", r["message"])
        if batch["dropped"]:
            logger.warning("%d log records dropped (logging too slow)", batch["dropped"])
        return len(batch["records"])
    except Exception as e:  # noqa: BLE001 - forwarding must never kill the thread
        logging.getLogger("flyjobs").debug("log forwarding failed: %r", e)
        return 0
