"""The worker's liveness signal: a file it touches on every loop; fresh means the loop is not stuck.

Orchestrators check it without HTTP (`python -m app worker --check`): a Docker/ECS health check or a
Kubernetes exec probe. Only the standard library here: the check runs every few seconds.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

MAX_AGE = 30.0  # seconds; the worker beats at least once per loop (about every second when idle)


def beat(path: str) -> None:
    """Set the file's modification time to now, creating it when missing."""
    Path(path).touch()


def age(path: str, *, now: float | None = None) -> float | None:
    """Seconds since the last beat, or None when there has been none."""
    try:
        mtime = os.stat(path).st_mtime
    except OSError:
        return None
    return max(0.0, (time.time() if now is None else now) - mtime)


def check(path: str, *, max_age: float = MAX_AGE, now: float | None = None) -> tuple[bool, str]:
    """(fresh, one line saying why) for the health check's output."""
    seconds = age(path, now=now)
    if seconds is None:
        return False, f"worker heartbeat {path} is missing"
    if seconds >= max_age:
        return False, f"worker heartbeat {path} is stale: {seconds:.1f}s old (max {max_age:g}s)"
    return True, f"worker heartbeat {path} is {seconds:.1f}s old"
