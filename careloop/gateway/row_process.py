"""Rows built in child processes: parsing and redaction off the gateway's GIL.

Redacting a fresh exchange costs 0.3–0.7 ms of pure-Python CPU. In the writer thread that time holds the GIL the
event loop needs, so at a few thousand new prompts a second the relay waits for it. Child processes (`spawn`ed,
so nothing of the gateway's loop or threads is copied; `gateway.row_processes` of them, each taking an equal
share of every batch) build the rows instead; the writer thread only sends each record's WAL encoding there
(bytes the request path made anyway) and unpickles the rows back, and waits with the GIL released. Each child
keeps its own memo of redacted texts (system prompts and earlier turns come back with every request).

If a child dies (killed, out of memory), the batch is built in the writer thread instead and new children are
started for the next one: a row is never lost to them. Rows are built the same way in both places
(`build_row`); a record whose row cannot be built comes back as its error's text, for the quarantine.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from careloop.gateway.quarantine import reason_of
from careloop.gateway.record import Record, decode_record, encode_record
from careloop.gateway.rows import build_row

log = logging.getLogger("careloop.traffic_log")

Built = dict[str, Any] | str  # a row, or why it could not be built


def build_rows(batch: list[Record] | list[bytes]) -> list[Built]:
    """Each record's row, or the reason its row could not be built. A child gets records as `encode_record`
    wrote them: bytes cross the pipe as they are, where pickling a record would cost the writer thread as much as
    building its row from the memo."""
    out: list[Built] = []
    for item in batch:
        try:
            out.append(build_row(decode_record(item) if isinstance(item, bytes) else item))
        except Exception as exc:
            out.append(f"unbuildable: {reason_of(exc)}")
    return out


def encoded(record: Record) -> bytes:
    """The record's `encode_record` bytes (made on the request path when the WAL is on)."""
    if record.encoded is None:
        record.encoded = encode_record(record)
    return record.encoded


def _child_init(parent: int) -> None:
    """In each child: a lower priority than the gateway's event loop, and exit as soon as the gateway is gone (a
    SIGKILLed gateway cannot stop its children; they would wait for work forever)."""
    with contextlib.suppress(OSError):
        os.nice(5)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


class RowProcess:
    """Builds batches of rows in `processes` child processes (started on first use, restarted if one dies)."""

    def __init__(self, processes: int = 1, timeout_s: float = 30.0) -> None:
        self.processes = max(1, processes)
        self.timeout_s = timeout_s
        self._pool: ProcessPoolExecutor | None = None
        self.restarts = 0

    def _ensure(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.processes, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_child_init, initargs=(os.getpid(),))
        return self._pool

    def start(self) -> None:
        """Start the children now (each imports the redaction rules once, before traffic needs them)."""
        pool = self._ensure()
        for future in [pool.submit(build_rows, []) for _ in range(self.processes)]:
            future.result(self.timeout_s)

    def build(self, batch: list[Record]) -> list[Built]:
        """The rows of a batch, in order, built in the children; in this thread if one is gone or fails."""
        try:
            pool = self._ensure()
            data = [encoded(r) for r in batch]
            share = -(-len(data) // self.processes)
            futures = [pool.submit(build_rows, data[i:i + share]) for i in range(0, len(data), share or 1)]
            return [row for future in futures for row in future.result(self.timeout_s)]
        except Exception as exc:  # the child died, hung or could not be reached: never lose the batch
            log.error("row builder process failed (%s); building this batch in the writer thread and "
                      "starting a new process", type(exc).__name__)
            self._discard()
            self.restarts += 1
            return build_rows(batch)

    def pids(self) -> list[int]:
        """The children's process ids (none before they started)."""
        return list(getattr(self._pool, "_processes", None) or {})

    def _discard(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            for proc in list((getattr(pool, "_processes", None) or {}).values()):
                proc.kill()
            pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        """Stop the children."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
