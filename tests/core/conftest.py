"""Helpers of the foundation's tests: a writer beside a purge."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy.engine import Engine

from careloop.core.store import insert_exchanges


@contextmanager
def inserting(engine: Engine, batch: Callable[[int], list[dict[str, Any]]]) -> Iterator[list[float]]:
    """Insert `batch(i)` for i = 0, 1, ... in a thread for the block's duration; yields each insert's seconds."""
    stop = threading.Event()
    waits: list[float] = []

    def writer() -> None:
        i = 0
        while not stop.is_set():
            t = time.perf_counter()
            insert_exchanges(engine, batch(i))
            waits.append(time.perf_counter() - t)
            i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        yield waits
    finally:
        stop.set()
        thread.join(30)
