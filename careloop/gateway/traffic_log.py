"""The traffic log: a write-ahead log, a bounded in-memory queue, a background batch writer, a spool for when the
store is down, and a quarantine for rows the store rejects.

The request path appends a `Record` holding raw bytes (the parsed request it already has and the upstream
response as received) to the encrypted write-ahead log (`careloop/gateway/wal.py`) before the response ends, and to the
in-memory queue. Everything else — parsing the response or the SSE stream, counting tokens, redacting patient
identifiers, building rows and inserting them — runs in one writer thread, off the event loop. A process killed
with exchanges still queued leaves its WAL folder behind; the next start replays it.

When the store cannot be reached the batch goes to a JSONL file under the spool dir and the writer keeps serving
from memory; it probes the store again with backoff and, once an insert succeeds, replays the spool files
(inserts are idempotent on the exchange id, so a replay that is cut short can simply run again). When the store
is reachable but refuses a batch, the batch is split until the rows it refuses are found; those go to the
quarantine (`careloop/gateway/quarantine.py`) with the reason, every other row is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import exc as sa_exc
from sqlalchemy import text as sa_text
from sqlalchemy.engine import Engine

from careloop.core.private_files import append_private, private_dir
from careloop.core.store import insert_exchanges
from careloop.gateway.metrics import GatewayMetrics
from careloop.gateway.quarantine import Quarantine, dumps_line, reason_of
from careloop.gateway.redact import redact, redact_messages, redact_params
from careloop.gateway.wal import Wal, orphans, read_segments

log = logging.getLogger("careloop.traffic_log")

# Request fields that are not stored as parameters (the messages have their own column; the user id is hashed).
_NOT_PARAMS = frozenset({"messages", "user", "stream_options"})
MAX_TEXT = 200_000  # characters of response text stored per exchange


@dataclass(slots=True)
class Record:
    """One exchange as the request path saw it: raw, unparsed, unredacted (never leaves this process)."""

    id: str
    created: float  # epoch seconds at arrival
    public_model: str
    target: str
    role: str
    user_key: str | None
    request: dict[str, Any]
    response: bytes | list[bytes] | None  # whole body, or the SSE chunks as received
    status: int
    stream: bool
    sampled: bool
    latency_ms: float
    error: str | None = None
    # Operations (issue 23).
    request_id: str | None = None
    trace_id: str | None = None
    key_name: str | None = None
    wal_seq: int = 0  # the WAL segment holding it (0: not in the WAL)


_HEAD = struct.Struct(">I")
# Every field but the response bytes and the WAL position, by name: a field added to Record travels too.
_WAL_FIELDS = tuple(f.name for f in fields(Record) if f.name not in ("response", "wal_seq"))


def encode_record(r: Record) -> bytes:
    """The record as bytes for the write-ahead log: a JSON head (its fields), then the response as received."""
    head_obj = {name: getattr(r, name) for name in _WAL_FIELDS}
    head_obj["_kind"] = "none" if r.response is None else "sse" if isinstance(r.response, list) else "body"
    try:
        head = orjson.dumps(head_obj)
    except TypeError:
        head = dumps_line(head_obj).rstrip(b"\n")
    body = b"".join(r.response) if isinstance(r.response, list) else (r.response or b"")
    return _HEAD.pack(len(head)) + head + body


def decode_record(data: bytes) -> Record:
    """A record read back from the write-ahead log."""
    (n,) = _HEAD.unpack_from(data)
    head = orjson.loads(data[4:4 + n])
    body = data[4 + n:]
    kind = head.pop("_kind")
    response: bytes | list[bytes] | None = None if kind == "none" else [body] if kind == "sse" else body
    return Record(response=response, **{k: v for k, v in head.items() if k in _WAL_FIELDS})


def _usage(obj: dict[str, Any]) -> tuple[int | None, int | None]:
    usage = obj.get("usage")
    if isinstance(usage, dict):
        return usage.get("prompt_tokens"), usage.get("completion_tokens")
    return None, None


def parse_response(body: bytes) -> tuple[str | None, str | None, int | None, int | None]:
    """(text, finish_reason, prompt_tokens, completion_tokens) of a non-streamed chat completion."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None, None, None
    if not isinstance(obj, dict):
        return None, None, None, None
    text = finish = None
    choices = obj.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        message = choices[0].get("message") or {}
        text = message.get("content") if isinstance(message, dict) else None
        finish = choices[0].get("finish_reason")
    prompt, completion = _usage(obj)
    return text, finish, prompt, completion


def parse_stream(chunks: list[bytes]) -> tuple[str, str | None, int | None, int | None]:
    """(text, finish_reason, prompt_tokens, completion_tokens) assembled from SSE chunks.

    Token counts come from the usage chunk when there is one; otherwise completion tokens are the number of
    content deltas (vLLM sends one token per delta) and prompt tokens are unknown.
    """
    texts: list[str] = []
    finish: str | None = None
    prompt = completion = None
    deltas = 0
    for line in b"".join(chunks).split(b"\n"):
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if not payload or payload == b"[DONE]":
            continue
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(obj, dict):
            continue
        for choice in obj.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            piece = delta.get("content") if isinstance(delta, dict) else None
            if piece:
                texts.append(piece)
                deltas += 1
            if choice.get("finish_reason"):
                finish = choice["finish_reason"]
        p, c = _usage(obj)
        if p is not None or c is not None:
            prompt, completion = p, c
    if completion is None and deltas:
        completion = deltas
    return "".join(texts), finish, prompt, completion


def build_row(record: Record) -> dict[str, Any]:
    """The exchange row for a record: response parsed, identifiers redacted."""
    text: str | None
    prompt = completion = None
    finish = None
    if record.status == 200 and record.response is not None:
        if isinstance(record.response, list):
            text, finish, prompt, completion = parse_stream(record.response)
        else:
            text, finish, prompt, completion = parse_response(record.response)
    else:
        text = record.error
        if text is None and isinstance(record.response, bytes):
            text = record.response[:2000].decode("utf-8", "replace")
        finish = "error"
    if text is not None:
        text = redact(text[:MAX_TEXT])
    req = record.request
    params = redact_params({k: v for k, v in req.items() if k not in _NOT_PARAMS})
    asked = req.get("model")
    if record.target == "none" and isinstance(asked, str) and asked != record.public_model:
        params["requested_model"] = redact(asked[:256])  # a rejected request's model name, redacted
    params["model"] = record.public_model
    sampled = record.sampled and record.status == 200 and bool(text)
    return {
        "id": record.id,
        "created_at": datetime.fromtimestamp(record.created, UTC),
        "public_model": record.public_model,
        "target": record.target,
        "role": record.role,
        "user_key": record.user_key,
        "request_messages": redact_messages(req.get("messages")),
        "request_params": params,
        "response_text": text,
        "finish_reason": finish if isinstance(finish, str) else None,
        "prompt_tokens": prompt if isinstance(prompt, int) else None,
        "completion_tokens": completion if isinstance(completion, int) else None,
        "latency_ms": round(record.latency_ms, 3),
        "status": record.status,
        "stream": record.stream,
        "sampled": sampled,
        "judge_state": "pending" if sampled else "none",
        "claimed_by": None,
        "claimed_at": None,
        "request_id": record.request_id,
        "trace_id": record.trace_id,
        "key_name": record.key_name,
        "text_purged_at": None,
    }


# Errors that mean the store itself is unreachable or cannot write (spool and retry), not that a row is bad.
_DOWN_ERRORS = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.DisconnectionError, sa_exc.TimeoutError,
                ConnectionError, TimeoutError)


class StoreDown(Exception):
    """The store cannot take rows right now."""


class TrafficLog:
    """WAL + bounded queue → batches → store (or spool, or quarantine), written by one background thread."""

    def __init__(self, engine: Engine, spool_dir: Path, metrics: GatewayMetrics, max_queue: int = 20_000,
                 batch_size: int = 500, flush_interval_s: float = 0.2,
                 insert: Callable[[Engine, list[dict[str, Any]]], int] = insert_exchanges,
                 wal_dir: Path | None = None, wal_key: bytes | None = None,
                 quarantine_dir: Path | None = None) -> None:
        self.engine = engine
        self.spool_dir = Path(spool_dir)
        self.metrics = metrics
        self.max_queue = max_queue
        self.high_water = max_queue // 2
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self._insert = insert
        self._queue: deque[Record] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="careloop-traffic-log")
        self._closing = False
        self._store_ok = True
        self._retry_at = 0.0
        self._backoff = 1.0
        self._spool_lock = threading.Lock()
        self._spool_file: Path | None = None
        self.wal_dir = wal_dir
        self.wal_key = wal_key
        self.wal: Wal | None = None
        self.quarantine = Quarantine(quarantine_dir or self.spool_dir.parent / "quarantine")
        self.written = 0
        self.dropped = 0
        self.spooled = 0
        self.spool_pending = 0
        self.recovered = 0
        metrics.queue_depth.set_function(lambda: len(self._queue))

    # The request path.
    def submit(self, record: Record) -> None:
        """Append one exchange to the WAL and queue it (a full queue leaves it in the WAL for the next start,
        counted as dropped). Never blocks."""
        wal = self.wal
        if wal is not None:
            record.wal_seq = wal.append(encode_record(record))
        if len(self._queue) >= self.max_queue:
            self.dropped += 1
            self.metrics.dropped.inc()
            return
        self._queue.append(record)
        if len(self._queue) >= self.batch_size:
            self._wake.set()

    async def wait_for_room(self, max_wait_s: float = 1.0) -> None:
        """Backpressure: called by a request that found the queue above its high-water mark, after its response
        was sent. Waiting (not computing) hands the GIL to the writer thread, and holds that client's next
        request on the connection, so under sustained overload the gateway slows intake instead of dropping
        exchanges. Gives up after `max_wait_s` (then a full queue drops, counted)."""
        self.metrics.backpressure.inc()
        deadline = time.monotonic() + max_wait_s
        while len(self._queue) > self.high_water and time.monotonic() < deadline and self._task is not None:
            await asyncio.sleep(0.002)

    @property
    def depth(self) -> int:
        """Exchanges waiting in memory."""
        return len(self._queue)

    @property
    def store_ok(self) -> bool:
        """Whether the last write reached the store."""
        return self._store_ok

    @property
    def quarantined(self) -> int:
        """Rows this process put in the quarantine."""
        return self.quarantine.rows

    # Lifecycle.
    def start(self) -> None:
        """Open this process's WAL and start the background writer (which first replays what a dead process
        left in its WAL)."""
        private_dir(self.spool_dir)
        if self.wal_dir is not None and self.wal_key is not None and self.wal is None:
            self.wal = Wal(self.wal_dir, self.wal_key)
        self._refresh_spool_gauge()
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
                    self._spool([build_row(r) for r in rest])
                    self._wal_done(rest)
        self._executor.shutdown(wait=True)
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
        return [q.popleft() for _ in range(min(n, len(q)))]

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
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
                await loop.run_in_executor(self._executor, self._replay_if_store_back)
                return
            if not self._store_ok and time.monotonic() >= self._retry_at:
                await loop.run_in_executor(self._executor, self._replay_if_store_back)

    # The writer thread.
    def _wal_done(self, batch: list[Record]) -> None:
        if self.wal is not None:
            self.wal.done([r.wal_seq for r in batch if r.wal_seq])

    def _rows(self, batch: list[Record]) -> list[dict[str, Any]]:
        rows = []
        for record in batch:
            try:
                rows.append(build_row(record))
            except Exception as exc:
                log.error("could not build the row of exchange %s (%s); quarantined", record.id,
                          type(exc).__name__)
                self._quarantine([({"id": record.id, "status": record.status}, f"unbuildable: {reason_of(exc)}")])
        return rows

    def _write(self, batch: list[Record]) -> None:
        if self.wal is not None:
            self.wal.sync()  # group commit: one fdatasync for everything appended since the last batch
        rows = self._rows(batch)
        for row in rows:
            if row["sampled"]:
                self.metrics.sampled.labels(row["target"]).inc()
        self._store(rows)
        self._wal_done(batch)

    def _store(self, rows: list[dict[str, Any]]) -> None:
        """Rows to the store; to the spool when it is down; rows it refuses to the quarantine."""
        if not rows:
            return
        if not self._store_ok and time.monotonic() < self._retry_at:
            self._spool(rows)
            return
        try:
            stored = self._insert_isolating(rows)
        except StoreDown as exc:
            self._mark_down(exc)
            self._spool(rows)  # rows already stored are skipped on replay (idempotent)
            return
        self.written += stored
        self.metrics.written.inc(stored)
        if not self._store_ok:
            log.warning("store reachable again; replaying the spool")
            self._store_ok, self._backoff = True, 1.0
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
                self._quarantine([(rows[0], reason_of(exc))])
                return 0
        except Exception as exc:
            if len(rows) == 1:
                if not self._reachable():
                    raise StoreDown(reason_of(exc)) from None
                self._quarantine([(rows[0], reason_of(exc))])
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

    def _quarantine(self, rows: list[tuple[dict[str, Any], str]]) -> None:
        for _, reason in rows:
            log.error("the store refused an exchange row; quarantined (%s)", reason)
        self.quarantine.add_rows(rows)
        self.metrics.quarantined.inc(len(rows))

    def _mark_down(self, exc: Exception) -> None:
        if self._store_ok:
            log.error("store unreachable, spooling exchanges to %s: %s", self.spool_dir, exc)
        self._store_ok = False
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, 30.0)

    def _replay_if_store_back(self) -> None:
        if not self._spool_files():
            if not self._store_ok and self._reachable():
                self._store_ok, self._backoff = True, 1.0
            elif not self._store_ok:
                self._retry_at = time.monotonic() + self._backoff
            return
        try:
            self._replay()
        except Exception as exc:
            self._mark_down(exc)
        else:
            self._store_ok, self._backoff = True, 1.0

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
                        self._quarantine([({"wal_record": True}, f"undecodable WAL record: {reason_of(exc)}")])
                for i in range(0, len(records), self.batch_size):
                    self._store(self._rows(records[i:i + self.batch_size]))
                total += len(records)
                if seg.error is not None:
                    log.error("WAL segment %s: %s; kept in the quarantine", seg.path, seg.error)
                    self.quarantine.add_file(seg.path, seg.error)
                    self.metrics.quarantined.inc()
            self.recovered += total
            log.warning("recovered %d exchanges from the write-ahead log of a stopped gateway (%s)", total,
                        orphan.folder.name)
            orphan.release(remove=True)

    # The spool.
    def _spool_files(self) -> list[Path]:
        return sorted(self.spool_dir.glob("exchanges-*.jsonl"))

    def _spool(self, rows: list[dict[str, Any]]) -> None:
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
                self._quarantine([({"spool_line": line[:4096].decode("utf-8", "replace")},
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
                    self._refresh_spool_gauge()
                    raise ConnectionError(str(exc)) from None
            path.unlink(missing_ok=True)
            self.written += stored
            self.metrics.written.inc(stored)
            log.info("replayed %d spooled exchanges from %s", stored, path.name)
        self._refresh_spool_gauge()

    def _count_spooled(self) -> int:
        total = 0
        for path in self._spool_files():
            with contextlib.suppress(OSError), path.open("rb") as fh:
                total += sum(1 for line in fh if line.strip())
        return total

    def _refresh_spool_gauge(self) -> None:
        self.spool_pending = self._count_spooled()
        self.metrics.spool_pending.set(self.spool_pending)
