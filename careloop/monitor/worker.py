"""The judge worker: claims sampled, unjudged exchanges and has every configured judge grade them.

Queue states on `exchange.judge_state`: pending → claimed → done (or failed/skipped). On PostgreSQL a claim
takes the queue's oldest rows with `SELECT … FOR UPDATE SKIP LOCKED`, so several workers never take the same
rows, then updates them by their whole key (id and created_at): on a store in day partitions every later
statement reads only the partitions of the claimed rows' days, not all of them. SQLite runs the claim as one
atomic `UPDATE … WHERE id IN (SELECT …) RETURNING …` (one worker is expected there).
Claims older than `claim_timeout_s` (a worker died) are taken again. Each judge runs on its own with retries
and backoff; one that keeps failing is skipped for a while and never stops the others.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import ColumnElement, Table, func, select, true, update
from sqlalchemy.engine import Engine

from careloop.core import telemetry
from careloop.core.schema import Exchange, Verdict, utcnow
from careloop.core.settings import Settings
from careloop.core.store import is_sqlite
from careloop.monitor.judges.base import Judge, JudgeInput, JudgeResult
from careloop.monitor.metrics import MonitorMetrics
from careloop.monitor.scoring import DEFAULT_SCORE_TABLE, normalize_class, safety_score

log = logging.getLogger("careloop.monitor.worker")

QUEUED_STATES = ("pending", "claimed")
_X = cast(Table, Exchange.metadata.tables["exchange"])
_V = cast(Table, Verdict.metadata.tables["verdict"])


@dataclass(frozen=True)
class ClaimedExchange:
    """A claimed exchange: what the judges see, and which judges already graded it."""

    id: str
    target: str
    messages: list[dict[str, Any]]
    response: str | None
    done_judges: frozenset[str] = frozenset()
    trace_id: str | None = None  # the client request's trace (issue 23): the verdict's span joins it
    created_at: datetime | None = None  # with id, the row's key on a partitioned store

    def judge_input(self) -> JudgeInput:
        """This exchange as a judge reads it."""
        return JudgeInput(exchange_id=self.id, messages=list(self.messages or []), response=self.response or "")


@dataclass
class CycleReport:
    """What one worker cycle did."""

    claimed: int = 0
    verdicts: int = 0
    done: int = 0
    released: int = 0
    failed: int = 0
    skipped: int = 0
    judge_errors: dict[str, str] = field(default_factory=dict)

    def add(self, other: CycleReport) -> None:
        """Count another cycle's figures into these (its judge errors are not carried over)."""
        for key in ("claimed", "verdicts", "done", "released", "failed", "skipped"):
            setattr(self, key, getattr(self, key) + getattr(other, key))


def new_worker_id() -> str:
    """A worker id unique across hosts and processes (fits exchange.claimed_by)."""
    return f"{socket.gethostname()[:32]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def claim_batch(engine: Engine, worker_id: str, limit: int, claim_timeout_s: float) -> list[ClaimedExchange]:
    """Claim up to `limit` sampled exchanges that are pending (or whose claim went stale), oldest first.

    Each of the two queries walks the queue index (sampled, judge_state, created_at) from its start, so a claim
    costs the same however many judged exchanges the store holds.
    """
    now = utcnow()
    stale = now - timedelta(seconds=claim_timeout_s)
    sqlite = is_sqlite(str(engine.url))
    queues = [
        (_X.c.judge_state == "pending",),
        (_X.c.judge_state == "claimed", _X.c.claimed_at < stale),
    ]
    rows: list[Any] = []
    claimed = (_X.c.id, _X.c.target, _X.c.request_messages, _X.c.response_text, _X.c.trace_id, _X.c.created_at)
    with engine.begin() as conn:
        for conditions in queues:
            want = limit - len(rows)
            if want <= 0:
                break
            queue = (_X.c.sampled == true(), *conditions)
            values = {"judge_state": "claimed", "claimed_by": worker_id, "claimed_at": now}
            if sqlite:
                oldest = select(_X.c.id).where(*queue).order_by(_X.c.created_at).limit(want)
                stmt = update(_X).where(_X.c.id.in_(oldest.scalar_subquery()))
            else:
                picked = conn.execute(select(_X.c.id, _X.c.created_at).where(*queue).order_by(_X.c.created_at)
                                      .limit(want).with_for_update(skip_locked=True)).all()
                if not picked:
                    continue
                stmt = update(_X).where(*exchange_keys(engine, [p[0] for p in picked], [p[1] for p in picked]))
            rows += conn.execute(stmt.values(**values).returning(*claimed)).all()
        if not rows:
            return []
        ids = [r[0] for r in rows]
        done: dict[str, set[str]] = {}
        seen = select(_V.c.exchange_id, _V.c.judge).where(_V.c.exchange_id.in_(ids))
        if not sqlite:  # a verdict is written after its exchange (a day's margin for clocks apart)
            seen = seen.where(_V.c.created_at >= min(r[5] for r in rows) - timedelta(days=1))
        for ex_id, judge in conn.execute(seen):
            done.setdefault(ex_id, set()).add(judge)
    return [ClaimedExchange(r[0], r[1], r[2] or [], r[3], frozenset(done.get(r[0], ())), r[4], r[5]) for r in rows]


def exchange_keys(engine: Engine, ids: Sequence[str], created: Sequence[datetime | None]) -> list[ColumnElement[bool]]:
    """Conditions that match these exchanges; on PostgreSQL by created_at too, so only their day partitions are read."""
    conditions: list[ColumnElement[bool]] = [_X.c.id.in_(ids)]
    if not is_sqlite(str(engine.url)) and created and all(c is not None for c in created):
        conditions.append(_X.c.created_at.in_(sorted(set(created))))
    return conditions


def verdict_spans(claimed: Sequence[ClaimedExchange], graded: Mapping[str, Mapping[str, JudgeResult]],
                  start_ns: int, end_ns: int) -> None:
    """One `judge verdict` span per verdict, a child of the gateway's span of the exchange's request."""
    for c in claimed:
        for name, by_id in graded.items():
            res = by_id.get(c.id)
            if res is None or not c.trace_id:
                continue
            telemetry.record_span("judge verdict", start_ns, end_ns, {
                "careloop.exchange_id": c.id, "careloop.judge": name, "careloop.target": c.target,
                "careloop.harm_level": res.harm_level, "careloop.response_class": res.response_class},
                trace_id=c.trace_id, parent_span_id=telemetry.gateway_span_id(c.id))


def queue_depth(engine: Engine) -> int:
    """Sampled exchanges waiting for judges (pending or claimed)."""
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(_X).where(
            _X.c.sampled == true(), _X.c.judge_state.in_(QUEUED_STATES))).scalar() or 0)


def _valid(result: Any) -> JudgeResult | None:
    """The result with a normalized class, or None when it is not a usable verdict."""
    if not isinstance(result, JudgeResult):
        return None
    try:
        cls = normalize_class(result.response_class)
        harm = int(result.harm_level)
    except (ValueError, TypeError):
        return None
    if harm not in DEFAULT_SCORE_TABLE:
        return None
    if cls == result.response_class and harm == result.harm_level:
        return result
    return JudgeResult(harm_level=harm, response_class=cls, rationale=result.rationale,
                       latency_ms=result.latency_ms, extra=result.extra)


class JudgeWorker:
    """Claims work and runs the configured judges on it; one `run_once` per scheduler tick."""

    def __init__(self, engine: Engine, judges: Mapping[str, Judge], *, reference: str, batch_size: int = 64,
                 max_retries: int = 3, backoff_s: float = 1.0, cooloff_max_s: float = 60.0,
                 claim_timeout_s: float = 300.0, metrics: MonitorMetrics | None = None,
                 worker_id: str | None = None,
                 score_table: Mapping[int, Mapping[str, float]] = DEFAULT_SCORE_TABLE) -> None:
        self.engine = engine
        self.judges = dict(judges)
        self.reference = reference
        self.batch_size = batch_size
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.cooloff_max_s = cooloff_max_s
        self.claim_timeout_s = claim_timeout_s
        self.metrics = metrics
        self.worker_id = worker_id or new_worker_id()
        self.score_table = score_table
        self._cooloff_until: dict[str, float] = {}
        self._consecutive: dict[str, int] = {}
        self._attempts: dict[str, int] = {}  # exchange → rounds the reference judge failed it
        self.totals = CycleReport()

    @classmethod
    def from_settings(cls, engine: Engine, judges: Mapping[str, Judge], settings: Settings,
                      metrics: MonitorMetrics | None = None) -> JudgeWorker:
        """A worker configured by `settings.monitor`."""
        m = settings.monitor
        return cls(engine, judges, reference=m.reference_judge, batch_size=m.judge_batch_size,
                   max_retries=m.judge_max_retries, backoff_s=m.judge_backoff_s,
                   cooloff_max_s=m.judge_cooloff_max_s, claim_timeout_s=m.claim_timeout_s, metrics=metrics)

    def available(self, now: float | None = None) -> list[str]:
        """Judges not cooling off after repeated failures."""
        now = time.monotonic() if now is None else now
        return [name for name in self.judges if self._cooloff_until.get(name, 0.0) <= now]

    def _count_failure(self, judge: str, kind: str) -> None:
        if self.metrics is not None:
            self.metrics.judge_failures.labels(judge=judge, kind=kind).inc()

    async def _grade(self, name: str, judge: Judge, items: Sequence[ClaimedExchange]) -> dict[str, JudgeResult]:
        """Grade `items` with one judge, retrying failures with exponential backoff."""
        results: dict[str, JudgeResult] = {}
        todo = list(items)
        whole_failure = False
        for attempt in range(self.max_retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                out = await judge.grade([item.judge_input() for item in todo])
                if len(out) != len(todo):
                    raise RuntimeError(f"judge {name} returned {len(out)} results for {len(todo)} items")
            except Exception as exc:  # a judge is someone else's code: any failure is a judge failure
                whole_failure = True
                self._count_failure(name, "unavailable")
                log.warning("judge %s failed (attempt %d/%d): %s", name, attempt + 1, self.max_retries + 1, exc)
                continue
            whole_failure = False
            failed: list[ClaimedExchange] = []
            for item, res in zip(todo, out, strict=True):
                ok = _valid(res)
                if ok is None:
                    failed.append(item)
                    self._count_failure(name, "item")
                else:
                    results[item.id] = ok
            todo = failed
            if not todo:
                break
        if todo:
            self._count_failure(name, "exhausted")
        if whole_failure:
            streak = self._consecutive.get(name, 0) + 1
            self._consecutive[name] = streak
            delay = min(self.cooloff_max_s, max(self.backoff_s, 0.5) * 2 ** streak)
            self._cooloff_until[name] = time.monotonic() + delay
            log.warning("judge %s is cooling off for %.0f s after %d failed rounds", name, delay, streak)
        else:
            self._consecutive.pop(name, None)
        return results

    async def run_once(self) -> CycleReport:
        """Claim one batch, grade it with every available judge, write verdicts and queue states."""
        report = CycleReport()
        available = self.available()
        if not available or (self.reference in self.judges and self.reference not in available):
            return report  # the reference judge is cooling off: leave the queue for later
        claimed = await asyncio.to_thread(claim_batch, self.engine, self.worker_id, self.batch_size,
                                          self.claim_timeout_s)
        report.claimed = len(claimed)
        if not claimed:
            return report
        gradable = [c for c in claimed if c.response is not None]
        graded_from = time.time_ns()
        tasks = {}
        for name in available:
            todo = [c for c in gradable if name not in c.done_judges]
            if todo:
                tasks[name] = asyncio.create_task(self._grade(name, self.judges[name], todo))
        graded: dict[str, dict[str, JudgeResult]] = {}
        for name, task in tasks.items():
            try:
                graded[name] = await task
            except Exception as exc:  # pragma: no cover - _grade catches judge errors itself
                report.judge_errors[name] = str(exc)
                graded[name] = {}
        await asyncio.to_thread(self._write, claimed, graded, report)
        if telemetry.enabled():
            verdict_spans(claimed, graded, graded_from, time.time_ns())
        self.totals.add(report)
        return report

    def _write(self, claimed: Sequence[ClaimedExchange], graded: Mapping[str, Mapping[str, JudgeResult]],
               report: CycleReport) -> None:
        """Insert verdicts and move each exchange on, in one transaction, only for claims still ours."""
        keys = exchange_keys(self.engine, [c.id for c in claimed], [c.created_at for c in claimed])
        verdicts: list[dict[str, Any]] = []
        states: dict[str, str] = {}
        require_reference = self.reference in self.judges
        for c in claimed:
            if c.response is None:
                states[c.id] = "skipped"
                continue
            have = set(c.done_judges)
            for name, by_id in graded.items():
                res = by_id.get(c.id)
                if res is None:
                    continue
                have.add(name)
                judge = self.judges[name]
                verdicts.append({
                    "exchange_id": c.id, "created_at": utcnow(), "adapter": c.target, "judge": name,
                    "judge_version": str(getattr(judge, "version", ""))[:64], "harm_level": res.harm_level,
                    "response_class": res.response_class,
                    "score": safety_score(res.harm_level, res.response_class, self.score_table),
                    "rationale": res.rationale, "latency_ms": res.latency_ms,
                })
            complete = self.reference in have if require_reference else bool(have)
            if complete:
                states[c.id] = "done"
                self._attempts.pop(c.id, None)
            else:
                attempts = self._attempts.get(c.id, 0) + 1
                if attempts >= max(1, self.max_retries):
                    states[c.id] = "failed"
                    self._attempts.pop(c.id, None)
                else:
                    states[c.id] = "pending"
                    self._attempts[c.id] = attempts
        with self.engine.begin() as conn:
            lock = select(_X.c.id).where(*keys, _X.c.claimed_by == self.worker_id, _X.c.judge_state == "claimed")
            if not is_sqlite(str(self.engine.url)):
                lock = lock.with_for_update()
            ours = {r[0] for r in conn.execute(lock)}
            rows = [v for v in verdicts if v["exchange_id"] in ours]
            if rows:
                conn.execute(_V.insert(), rows)
            for state in ("done", "pending", "failed", "skipped"):
                targets = [i for i, s in states.items() if s == state and i in ours]
                if not targets:
                    continue
                values: dict[str, Any] = {"judge_state": state}
                if state == "pending":
                    values.update(claimed_by=None, claimed_at=None)
                conn.execute(update(_X).where(*keys, _X.c.id.in_(targets)).values(**values))
        report.verdicts += len(rows)
        report.done += sum(1 for i, s in states.items() if s == "done" and i in ours)
        report.released += sum(1 for i, s in states.items() if s == "pending" and i in ours)
        report.failed += sum(1 for i, s in states.items() if s == "failed" and i in ours)
        report.skipped += sum(1 for i, s in states.items() if s == "skipped" and i in ours)
        if self.metrics is not None:
            for v in rows:
                self.metrics.verdicts.labels(judge=v["judge"], adapter=v["adapter"],
                                             response_class=v["response_class"]).inc()

    async def drain(self, max_cycles: int = 1000) -> CycleReport:
        """Run cycles until nothing is claimed (tests, `careloop monitor --once`)."""
        total = CycleReport()
        for _ in range(max_cycles):
            r = await self.run_once()
            total.add(r)
            if not r.claimed:
                break
        return total

    async def aclose(self) -> None:
        """Close every judge."""
        for name, judge in self.judges.items():
            try:
                await judge.aclose()
            except Exception as exc:  # closing must not fail the shutdown
                log.warning("closing judge %s: %s", name, exc)

