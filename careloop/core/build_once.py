"""Build an artefact once per machine: a second process waits on a file lock for the first one's result."""

from __future__ import annotations

import fcntl
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def build_once(lock_path: Path, existing: Callable[[], T | None], build: Callable[[], T]) -> T:
    """What `existing()` finds, else `build()` under an exclusive lock (looked for again once the lock is held)."""
    found = existing()
    if found is not None:
        return found
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second process waits here for the first one's artefact
        found = existing()
        return found if found is not None else build()
