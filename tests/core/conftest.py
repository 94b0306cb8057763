"""Fixtures and helpers of the foundation's tests: a PostgreSQL database of its own, a writer beside a purge."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from careloop.core.store import insert_exchanges
from tests.conftest import PG_ADMIN_URL


@pytest.fixture
def fresh_pg() -> Iterator[str]:
    """A new, empty PostgreSQL database for one test."""
    import psycopg

    name = f"careloop_mig_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


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
