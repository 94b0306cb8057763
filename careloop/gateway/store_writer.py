"""Exchange rows into the store: to a spool file while the store is down (replayed once it is back), and rows it
refuses to the quarantine.

When the store cannot be reached the rows go to a JSONL file under the spool dir; the store is probed again with
backoff and, once an insert succeeds, the spool files are replayed (inserts are idempotent on the exchange id, so
a replay that is cut short can simply run again). When the store is reachable but refuses a batch, the batch is
split until the rows it refuses are found; those go to the quarantine (`careloop/gateway/quarantine.py`) with
the reason, every other row is stored.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import exc as sa_exc
from sqlalchemy import text as sa_text
from sqlalchemy.engine import Engine

from careloop.core.private_files import append_private
from careloop.core.store import insert_exchanges
from careloop.gateway.metrics import GatewayMetrics
from careloop.gateway.quarantine import Quarantine, dumps_line, reason_of

log = logging.getLogger("careloop.traffic_log")

# Errors that mean the store itself is unreachable or cannot write (spool and retry), not that a row is bad.
_DOWN_ERRORS = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.DisconnectionError, sa_exc.TimeoutError,
                ConnectionError, TimeoutError)


class StoreDown(Exception):
    """The store cannot take rows right now."""


class StoreWriter:
    """Rows → store, or spool while it is down, or quarantine for rows it refuses (called from one thread)."""

    def __init__(self, engine: Engine, spool_dir: Path, metrics: GatewayMetrics, quarantine: Quarantine,
                 batch_size: int = 500,
                 insert: Callable[[Engine, list[dict[str, Any]]], int] = insert_exchanges) -> None:
        self.engine = engine
        self.spool_dir = spool_dir
        self.metrics = metrics
        self.quarantine = quarantine
        self.batch_size = batch_size
        self._insert = insert
        self.store_ok = True
        self._retry_at = 0.0
        self._backoff = 1.0
        self._spool_lock = threading.Lock()
        self._spool_file: Path | None = None
        self.written = 0
        self.spooled = 0
        self.spool_pending = 0

    @property
    def retry_due(self) -> bool:
        """Whether the store is marked down and its next probe is due."""
        return not self.store_ok and time.monotonic() >= self._retry_at

    def store(self, rows: list[dict[str, Any]]) -> None:
        """Rows to the store; to the spool when it is down; rows it refuses to the quarantine."""
        if not rows:
            return
        if not self.store_ok and time.monotonic() < self._retry_at:
            self.spool(rows)
            return
        try:
            stored = self._insert_isolating(rows)
        except StoreDown as exc:
            self._mark_down(exc)
            self.spool(rows)  # rows already stored are skipped on replay (idempotent)
            return
        self.written += stored
        self.metrics.written.inc(stored)
        if not self.store_ok:
            log.warning("store reachable again; replaying the spool")
            self.store_ok, self._backoff = True, 1.0
        if self._spool_files():
            self._replay()

    def _insert_isolating(self, rows: list[dict[str, Any]]) -> int:
        """Insert rows; when the store refuses the batch for what it holds, split it until each refused row is
        alone, quarantine those, store the rest. Raises StoreDown when the store cannot be reached."""
        try:
            self._insert(self.engine, rows)
            return len(rows)
        except _DOWN_ERRORS as exc:
            # SQLite answers SELECTs when it cannot write (read-only file, full disk): its operational errors
            # always mean the store is down. PostgreSQL's mean so only when it stops answering.
            if self.engine.dialect.name == "sqlite" or not self._reachable():
                raise StoreDown(reason_of(exc)) from None
            if len(rows) == 1:
                self.quarantine_rows([(rows[0], reason_of(exc))])
                return 0
        except Exception as exc:
            if len(rows) == 1:
                if not self._reachable():
                    raise StoreDown(reason_of(exc)) from None
                self.quarantine_rows([(rows[0], reason_of(exc))])
                return 0
        mid = len(rows) // 2
        return self._insert_isolating(rows[:mid]) + self._insert_isolating(rows[mid:])

    def _reachable(self) -> bool:
        """Whether the store answers (then a refused row is the row's fault)."""
        try:
            with self.engine.connect() as conn:
                conn.execute(sa_text("SELECT 1"))
            return True
        except Exception:
            return False

    def quarantine_rows(self, rows: list[tuple[dict[str, Any], str]]) -> None:
        """Put rows the store refused (or that could not be built) in the quarantine, each with its reason."""
        for _, reason in rows:
            log.error("the store refused an exchange row; quarantined (%s)", reason)
        self.quarantine.add_rows(rows)
        self.metrics.quarantined.inc(len(rows))

    def _mark_down(self, exc: Exception) -> None:
        if self.store_ok:
            log.error("store unreachable, spooling exchanges to %s: %s", self.spool_dir, exc)
        self.store_ok = False
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, 30.0)

    def replay_if_store_back(self) -> None:
        """Probe a store marked down, replaying the spool into it once it answers."""
        if not self._spool_files():
            if not self.store_ok and self._reachable():
                self.store_ok, self._backoff = True, 1.0
            elif not self.store_ok:
                self._retry_at = time.monotonic() + self._backoff
            return
        try:
            self._replay()
        except Exception as exc:
            self._mark_down(exc)
        else:
            self.store_ok, self._backoff = True, 1.0

    # The spool.
    def _spool_files(self) -> list[Path]:
        return sorted(self.spool_dir.glob("exchanges-*.jsonl"))

    def spool(self, rows: list[dict[str, Any]]) -> None:
        """Append rows to this process's spool file (replayed into the store once it is back)."""
        if not rows:
            return
        data = b"".join(dumps_line(row) for row in rows)
        with self._spool_lock:
            if self._spool_file is None:
                self._spool_file = self.spool_dir / f"exchanges-{time.time_ns()}-{os.getpid()}.jsonl"
            append_private(self._spool_file, data)
        self.spooled += len(rows)
        self.spool_pending += len(rows)
        self.metrics.spooled.inc(len(rows))
        self.metrics.spool_pending.set(self.spool_pending)

    def _read_spool(self, path: Path) -> list[dict[str, Any]]:
        """The rows of one spool file; lines that do not parse go to the quarantine."""
        rows = []
        for line in path.read_bytes().splitlines():
            if not line.strip():
                continue
            try:
                row = orjson.loads(line)
                row["created_at"] = datetime.fromisoformat(row["created_at"])
            except Exception as exc:
                self.quarantine_rows([({"spool_line": line[:4096].decode("utf-8", "replace")},
                                       f"unreadable spool line: {reason_of(exc)}")])
                continue
            rows.append(row)
        return rows

    def _replay(self) -> None:
        """Insert every spooled row, file by file, deleting each file once it is in the store (or its refused
        rows in the quarantine). A file that cannot be read is moved to the quarantine; replay goes on."""
        with self._spool_lock:
            self._spool_file = None  # new spool writes go to a new file
            files = self._spool_files()
        for path in files:
            try:
                rows = self._read_spool(path)
            except OSError as exc:
                log.error("spool file %s cannot be read (%s); quarantined", path.name, type(exc).__name__)
                with contextlib.suppress(OSError):
                    self.quarantine.add_file(path, f"unreadable spool file: {reason_of(exc)}")
                continue
            stored = 0
            for i in range(0, len(rows), self.batch_size):
                try:
                    stored += self._insert_isolating(rows[i:i + self.batch_size])
                except StoreDown as exc:
                    self.refresh_spool_gauge()
                    raise ConnectionError(str(exc)) from None
            path.unlink(missing_ok=True)
            self.written += stored
            self.metrics.written.inc(stored)
            log.info("replayed %d spooled exchanges from %s", stored, path.name)
        self.refresh_spool_gauge()

    def _count_spooled(self) -> int:
        total = 0
        for path in self._spool_files():
            with contextlib.suppress(OSError), path.open("rb") as fh:
                total += sum(1 for line in fh if line.strip())
        return total

    def refresh_spool_gauge(self) -> None:
        """Count the rows waiting in spool files (at start, and after a replay)."""
        self.spool_pending = self._count_spooled()
        self.metrics.spool_pending.set(self.spool_pending)
