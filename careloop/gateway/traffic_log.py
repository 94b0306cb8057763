"""The traffic log: a write-ahead log, a bounded in-memory queue and a background batch writer.

The request path appends a `Record` holding raw bytes (the parsed request it already has and the upstream
response as received) to the encrypted write-ahead log (`careloop/gateway/wal.py`) before the response ends, and to the
in-memory queue. Everything else runs off the event loop: one writer thread takes batches, has their rows built —
the response or the SSE stream parsed, tokens counted, patient identifiers redacted (`careloop/gateway/rows.py`) —
in a child process (`careloop/gateway/row_process.py`, so that redaction does not hold the event loop's GIL), and
inserts them (`careloop/gateway/store_writer.py`: store, or spool while it is down, or quarantine). A process killed
with exchanges still queued leaves its WAL folder behind; the next start replays it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from careloop.core.private_files import private_dir
from careloop.core.store import insert_exchanges
from careloop.gateway.metrics import GatewayMetrics
from careloop.gateway.quarantine import Quarantine, reason_of
from careloop.gateway.record import Record, decode_record, encode_record
from careloop.gateway.row_process import RowProcess, build_rows
from careloop.gateway.rows import build_row
from careloop.gateway.store_writer import StoreWriter
from careloop.gateway.wal import Wal, orphans, read_segments

log = logging.getLogger("careloop.traffic_log")


class TrafficLog:
    """WAL + bounded queue → batches → store (or spool, or quarantine), written by one background thread."""

    def __init__(self, engine: Engine, spool_dir: Path, metrics: GatewayMetrics, max_queue: int = 20_000,
                 batch_size: int = 500, flush_interval_s: float = 0.2,
                 insert: Callable[[Engine, list[dict[str, Any]]], int] = insert_exchanges,
                 wal_dir: Path | None = None, wal_key: bytes | None = None,
                 quarantine_dir: Path | None = None, row_processes: int = 0) -> None:
        self.spool_dir = Path(spool_dir)
        self.metrics = metrics
        self.max_queue = max_queue
        self.high_water = max_queue // 2
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self._queue: deque[Record] = deque()
        self._wake = asyncio.Event()
        self._room = asyncio.Event()  # set while the queue is at or below its high-water mark
        self._room.set()
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="careloop-traffic-log")
        self._closing = False
        self.wal_dir = wal_dir
        self.wal_key = wal_key
        self.wal: Wal | None = None
        self.quarantine = Quarantine(quarantine_dir or self.spool_dir.parent / "quarantine")
        self.writer = StoreWriter(engine, self.spool_dir, metrics, self.quarantine, batch_size, insert)
        self.rows_in = RowProcess(row_processes) if row_processes > 0 else None
        self.dropped = 0
        self.recovered = 0
        metrics.queue_depth.set_function(lambda: len(self._queue))

    # The request path.
    def submit(self, record: Record) -> None:
        """Append one exchange to the WAL and queue it (a full queue leaves it in the WAL for the next start,
        counted as dropped). Never blocks."""
        wal = self.wal
        if wal is not None:
            record.encoded = encode_record(record)
            record.wal_seq = wal.append(record.encoded)
        if len(self._queue) >= self.max_queue:
            self.dropped += 1
            self.metrics.dropped.inc()
            return
        self._queue.append(record)
        depth = len(self._queue)
        if depth >= self.batch_size:
            self._wake.set()
        if depth > self.high_water:
            self._room.clear()

    async def wait_for_room(self, max_wait_s: float = 1.0) -> None:
        """Backpressure: called by a request that found the queue above its high-water mark, before it is
        forwarded. Holding requests (not answering them and waiting afterwards: the server would read the
        connection's next request meanwhile) is what slows intake, so under sustained overload the gateway
        serves at the writer's pace instead of dropping exchanges. Gives up after `max_wait_s` (a stuck writer
        must not stop the service; then a full queue drops, counted, and the WAL keeps them)."""
        self.metrics.backpressure.inc()
        if self._task is None or len(self._queue) <= self.high_water:
            return
        self._room.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._room.wait(), max_wait_s)

    @property
    def depth(self) -> int:
        """Exchanges waiting in memory."""
        return len(self._queue)

    def status(self) -> dict[str, Any]:
        """What `/admin/status` reports about the log: queue, store, spool, quarantine and WAL."""
        w = self.writer
        return {"queue_depth": self.depth, "written": w.written, "dropped": self.dropped, "spooled": w.spooled,
                "spool_pending": w.spool_pending, "store_ok": w.store_ok, "quarantined": self.quarantine.rows,
                "quarantined_on_disk": self.quarantine.count_rows(), "recovered_from_wal": self.recovered,
                "wal_pending": self.wal.pending if self.wal else 0}

    # Lifecycle.
    def start(self) -> None:
        """Open this process's WAL and start the background writer (which first replays what a dead process
        left in its WAL)."""
        private_dir(self.spool_dir)
        if self.wal_dir is not None and self.wal_key is not None and self.wal is None:
            self.wal = Wal(self.wal_dir, self.wal_key)
        self.writer.refresh_spool_gauge()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="careloop-traffic-log")

    async def drain(self, timeout_s: float = 30.0) -> None:
        """Write everything queued (store or spool) and stop the writer."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout_s)
            except TimeoutError:
                log.error("traffic log drain timed out with %d exchanges queued; spooling them", self.depth)
                self._task.cancel()
                rest = self._take(len(self._queue))
                if rest:
                    self.writer.spool([build_row(r) for r in rest])
                    self._wal_done(rest)
        self._executor.shutdown(wait=True)
        if self.rows_in is not None:
            self.rows_in.close()
        if self.wal is not None:
            self.wal.close()
            self.wal = None

    async def flush(self) -> None:
        """Write what is queued now (tests and admin use this)."""
        loop = asyncio.get_running_loop()
        while self._queue:
            batch = self._take(self.batch_size)
            await loop.run_in_executor(self._executor, self._write, batch)

    def _take(self, n: int) -> list[Record]:
        q = self._queue
        batch = [q.popleft() for _ in range(min(n, len(q)))]
        if len(q) <= self.high_water:
            self._room.set()  # release the requests backpressure holds
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        if self.rows_in is not None:
            try:
                await loop.run_in_executor(self._executor, self.rows_in.start)
            except Exception as exc:
                log.error("could not start the row builder process (%s); rows are built in the writer thread",
                          type(exc).__name__)
                self.rows_in = None
        if self.wal_dir is not None and self.wal_key is not None:
            try:
                await loop.run_in_executor(self._executor, self._recover)
            except Exception:
                log.exception("replaying the write-ahead log failed; it is kept for the next start")
        while True:
            if not self._closing and len(self._queue) < self.batch_size:
                # Let a batch fill up for at most one flush interval.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.flush_interval_s)
                self._wake.clear()
            if self._queue:
                batch = self._take(self.batch_size)
                try:
                    await loop.run_in_executor(self._executor, self._write, batch)
                except Exception:  # never let the writer die
                    log.exception("traffic log writer failed on a batch of %d", len(batch))
                continue
            if self._closing:
                await loop.run_in_executor(self._executor, self.writer.replay_if_store_back)
                return
            if self.writer.retry_due:
                await loop.run_in_executor(self._executor, self.writer.replay_if_store_back)

    # The writer thread.
    def _wal_done(self, batch: list[Record]) -> None:
        if self.wal is not None:
            self.wal.done([r.wal_seq for r in batch if r.wal_seq])

    def _rows(self, batch: list[Record]) -> list[dict[str, Any]]:
        built = self.rows_in.build(batch) if self.rows_in is not None else build_rows(batch)
        rows = []
        for record, row in zip(batch, built, strict=True):
            if isinstance(row, str):
                log.error("could not build the row of exchange %s; quarantined with the reason", record.id)
                self.writer.quarantine_rows([({"id": record.id, "status": record.status}, row)])
            else:
                rows.append(row)
        return rows

    def _write(self, batch: list[Record]) -> None:
        if self.wal is not None:
            self.wal.sync()  # group commit: one fdatasync for everything appended since the last batch
        rows = self._rows(batch)
        for row in rows:
            if row["sampled"]:
                self.metrics.sampled.labels(row["target"]).inc()
        self.writer.store(rows)
        self._wal_done(batch)

    # Recovery of a dead process's WAL.
    def _recover(self) -> None:
        """Store every exchange a dead gateway left in its WAL (idempotent: already-stored ones are skipped)."""
        assert self.wal_dir is not None and self.wal_key is not None
        for orphan in orphans(self.wal_dir):
            if self.wal is not None and orphan.folder == self.wal.folder:
                orphan.release(remove=False)
                continue
            total = 0
            for seg in read_segments(orphan, self.wal_key):
                records = []
                for data in seg.records:
                    try:
                        records.append(decode_record(data))
                    except Exception as exc:
                        self.writer.quarantine_rows([({"wal_record": True},
                                                      f"undecodable WAL record: {reason_of(exc)}")])
                for i in range(0, len(records), self.batch_size):
                    self.writer.store(self._rows(records[i:i + self.batch_size]))
                total += len(records)
                if seg.error is not None:
                    log.error("WAL segment %s: %s; kept in the quarantine", seg.path, seg.error)
                    self.quarantine.add_file(seg.path, seg.error)
                    self.metrics.quarantined.inc()
            self.recovered += total
            log.warning("recovered %d exchanges from the write-ahead log of a stopped gateway (%s)", total,
                        orphan.folder.name)
            orphan.release(remove=True)
