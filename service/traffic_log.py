"""The traffic log: a bounded in-memory queue, a background batch writer, and a spool for when the store is down.

The request path only appends a `Record` holding raw bytes (the parsed request it already has and the upstream
response as received). Everything else — parsing the response or the SSE stream, counting tokens, redacting
patient identifiers, building rows and inserting them — runs in one writer thread, off the event loop.

When an insert fails the batch goes to a JSONL file under the spool dir and the writer keeps serving from
memory; it probes the store again with backoff and, once an insert succeeds, replays the spool files (inserts
are idempotent on the exchange id, so a replay that is cut short can simply run again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy.engine import Engine

from service.metrics import GatewayMetrics
from service.redact import redact, redact_messages
from service.store import insert_exchanges

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
    params = {k: v for k, v in req.items() if k not in _NOT_PARAMS}
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


class TrafficLog:
    """Bounded queue → batches → store (or spool), written by one background thread."""

    def __init__(self, engine: Engine, spool_dir: Path, metrics: GatewayMetrics, max_queue: int = 20_000,
                 batch_size: int = 500, flush_interval_s: float = 0.2,
                 insert: Callable[[Engine, list[dict[str, Any]]], int] = insert_exchanges) -> None:
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
        self.written = 0
        self.dropped = 0
        self.spooled = 0
        self.spool_pending = 0
        metrics.queue_depth.set_function(lambda: len(self._queue))

    # The request path.
    def submit(self, record: Record) -> None:
        """Queue one exchange (drops it, counted, when the queue is full). Never blocks."""
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

    # Lifecycle.
    def start(self) -> None:
        """Start the background writer on the running loop."""
        self.spool_dir.mkdir(parents=True, exist_ok=True)
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
        self._executor.shutdown(wait=True)

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
    def _write(self, batch: list[Record]) -> None:
        rows = []
        for record in batch:
            try:
                rows.append(build_row(record))
            except Exception:
                log.exception("could not build the row of exchange %s", record.id)
        for row in rows:
            if row["sampled"]:
                self.metrics.sampled.labels(row["target"]).inc()
        if not self._store_ok and time.monotonic() < self._retry_at:
            self._spool(rows)
            return
        try:
            self._insert(self.engine, rows)
        except Exception as exc:
            self._mark_down(exc)
            self._spool(rows)
            return
        self.written += len(rows)
        self.metrics.written.inc(len(rows))
        if not self._store_ok:
            log.warning("store reachable again; replaying the spool")
            self._store_ok, self._backoff = True, 1.0
        if self._spool_files():
            self._replay()

    def _mark_down(self, exc: Exception) -> None:
        if self._store_ok:
            log.error("store unreachable, spooling exchanges to %s: %s", self.spool_dir, exc)
        self._store_ok = False
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, 30.0)

    def _replay_if_store_back(self) -> None:
        if not self._spool_files():
            self._store_ok = True
            return
        try:
            self._replay()
        except Exception as exc:
            self._mark_down(exc)
        else:
            self._store_ok, self._backoff = True, 1.0

    # The spool.
    def _spool_files(self) -> list[Path]:
        return sorted(self.spool_dir.glob("exchanges-*.jsonl"))

    def _spool(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        with self._spool_lock:
            if self._spool_file is None:
                self._spool_file = self.spool_dir / f"exchanges-{time.time_ns()}-{os.getpid()}.jsonl"
            with self._spool_file.open("ab") as fh:
                for row in rows:
                    fh.write(orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE))
                fh.flush()
                os.fsync(fh.fileno())
        self.spooled += len(rows)
        self.spool_pending += len(rows)
        self.metrics.spooled.inc(len(rows))
        self.metrics.spool_pending.set(self.spool_pending)

    def _replay(self) -> None:
        """Insert every spooled row, file by file, deleting each file once it is in the store."""
        with self._spool_lock:
            self._spool_file = None  # new spool writes go to a new file
            files = self._spool_files()
        for path in files:
            rows = []
            for line in path.read_bytes().splitlines():
                if not line.strip():
                    continue
                try:
                    row = orjson.loads(line)
                except orjson.JSONDecodeError:
                    log.error("skipping a corrupt line in %s", path)
                    continue
                row["created_at"] = datetime.fromisoformat(row["created_at"])
                rows.append(row)
            for i in range(0, len(rows), self.batch_size):
                self._insert(self.engine, rows[i:i + self.batch_size])
            path.unlink(missing_ok=True)
            self.written += len(rows)
            self.metrics.written.inc(len(rows))
            log.info("replayed %d spooled exchanges from %s", len(rows), path.name)
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
