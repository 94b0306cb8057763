"""Rolling windows per adapter and judge (last N verdicts, last T seconds), updated verdict by verdict.

A new verdict costs O(1): it is added to its windows' accumulators and whatever falls out is removed. On start
only what the windows need is read from the store (the last N per adapter/judge and the last T seconds); then
new verdicts are followed by id, with a short grace for ids that commit out of order (PostgreSQL sequences).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Table, func, select
from sqlalchemy.engine import Engine

from careloop.core.schema import Verdict
from careloop.core.settings import Settings
from careloop.monitor.divergence import Divergence, PairWindow
from careloop.monitor.scoring import MetricAccumulator, SafetyMetrics

WINDOW_KINDS: tuple[str, ...] = ("count", "time")


@dataclass(frozen=True, slots=True)
class VerdictRow:
    """The part of a verdict the windows need."""

    id: int
    exchange_id: str
    created_at: float  # epoch seconds
    adapter: str
    judge: str
    harm_level: int
    response_class: str
    score: float

    @property
    def graded(self) -> tuple[int, str, float]:
        """(harm level, response class, score): what the windows count."""
        return self.harm_level, self.response_class, self.score


def _epoch(value: datetime) -> float:
    if value.tzinfo is None:  # SQLite hands timestamps back naive; they are stored as UTC
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


@dataclass
class RollingWindow:
    """One accumulator over a deque: bounded by count, by age, or both."""

    max_count: int | None = None
    max_age_s: float | None = None
    rows: deque[VerdictRow] = field(default_factory=deque)
    acc: MetricAccumulator = field(default_factory=MetricAccumulator)

    def add(self, row: VerdictRow) -> None:
        """Count one verdict in and drop what the count bound pushes out."""
        self.rows.append(row)
        self.acc.add(*row.graded)
        if self.max_count is not None:
            while len(self.rows) > self.max_count:
                self._pop()

    def expire(self, now: float) -> None:
        """Drop verdicts older than the age bound."""
        if self.max_age_s is None:
            return
        cutoff = now - self.max_age_s
        while self.rows and self.rows[0].created_at < cutoff:
            self._pop()

    def _pop(self) -> None:
        old = self.rows.popleft()
        self.acc.remove(*old.graded)

    def metrics(self, alpha: float) -> SafetyMetrics:
        """The window's figures."""
        return self.acc.metrics(alpha)


@dataclass(frozen=True)
class WindowFigures:
    """One window's figures with where they came from (what triggers record)."""

    adapter: str
    judge: str
    window: str  # count | time
    metrics: SafetyMetrics
    first_id: int | None
    last_id: int | None

    def figures(self) -> dict[str, Any]:
        """Plain dict for a trigger event."""
        m = self.metrics
        return {"adapter": self.adapter, "judge": self.judge, "window": self.window, "n": m.n,
                "safety_score": m.safety_score, "err": m.err, "f1": m.f1, "overall": m.overall,
                "harmless": m.harmless, "harmful": m.harmful, "first_verdict_id": self.first_id,
                "last_verdict_id": self.last_id}


_V = cast(Table, Verdict.metadata.tables["verdict"]).c
_COLUMNS = (_V.id, _V.exchange_id, _V.created_at, _V.adapter, _V.judge, _V.harm_level, _V.response_class,
            _V.score)


def _row(r: Any) -> VerdictRow:
    return VerdictRow(int(r[0]), str(r[1]), _epoch(r[2]), str(r[3]), str(r[4]), int(r[5]), str(r[6]),
                      float(r[7]))


class WindowSet:
    """All rolling windows of the monitor plus judge-vs-reference pair windows; thread-safe."""

    def __init__(self, engine: Engine | None, *, window_count: int, window_seconds: float, alpha: float,
                 reference: str, batch_size: int = 5000, gap_grace_s: float = 60.0) -> None:
        self.engine = engine
        self.window_count = window_count
        self.window_seconds = window_seconds
        self.alpha = alpha
        self.reference = reference
        self.batch_size = batch_size
        self.gap_grace_s = gap_grace_s
        self.last_id = 0
        self.ingested = 0
        self._windows: dict[tuple[str, str], dict[str, RollingWindow]] = {}
        self._pairs: dict[tuple[str, str], PairWindow] = {}
        # Recent verdicts by exchange (judge → row), to pair judges with the reference; bounded.
        self._recent: OrderedDict[str, dict[str, VerdictRow]] = OrderedDict()
        self._recent_max = max(1000, 4 * window_count)
        self._seen_recent: set[int] = set()
        self._gaps: dict[int, float] = {}  # id → monotonic time first missed
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, engine: Engine | None, settings: Settings) -> WindowSet:
        """A window set configured by `settings.monitor`."""
        m = settings.monitor
        return cls(engine, window_count=m.window_count, window_seconds=m.window_seconds, alpha=m.alpha,
                   reference=m.reference_judge)

    # Ingest.
    def add(self, row: VerdictRow) -> None:
        """Count one verdict into its windows and pair it with the reference's verdict on that exchange."""
        with self._lock:
            self._add(row)

    def add_many(self, rows: Iterable[VerdictRow]) -> int:
        """Count several verdicts in (in id order); returns how many."""
        n = 0
        with self._lock:
            for row in rows:
                self._add(row)
                n += 1
        return n

    def _add(self, row: VerdictRow) -> None:
        self.ingested += 1
        key = (row.adapter, row.judge)
        wins = self._windows.get(key)
        if wins is None:
            wins = {"count": RollingWindow(max_count=self.window_count),
                    "time": RollingWindow(max_age_s=self.window_seconds)}
            self._windows[key] = wins
        wins["count"].add(row)
        wins["time"].add(row)
        self._pair(row)

    def _pair(self, row: VerdictRow) -> None:
        by_judge = self._recent.get(row.exchange_id)
        if by_judge is None:
            by_judge = {}
            self._recent[row.exchange_id] = by_judge
            while len(self._recent) > self._recent_max:
                self._recent.popitem(last=False)
        if row.judge in by_judge:  # a second verdict of the same judge: windows count it, pairs do not
            return
        by_judge[row.judge] = row
        if row.judge == self.reference:
            for other in by_judge.values():
                if other.judge != self.reference:
                    self._pair_window(row.adapter, other.judge).add(other.graded, row.graded)
        else:
            ref = by_judge.get(self.reference)
            if ref is not None:
                self._pair_window(row.adapter, row.judge).add(row.graded, ref.graded)

    def _pair_window(self, adapter: str, judge: str) -> PairWindow:
        window = self._pairs.get((adapter, judge))
        if window is None:
            window = PairWindow(max_count=self.window_count)
            self._pairs[(adapter, judge)] = window
        return window

    def expire(self, now: float | None = None) -> None:
        """Drop verdicts older than the time window."""
        now = time.time() if now is None else now
        with self._lock:
            for wins in self._windows.values():
                wins["time"].expire(now)

    # Store.
    def keys_in_store(self) -> list[tuple[str, str]]:
        """Distinct (adapter, judge) pairs, by a loose index scan: O(keys · log n), not O(verdicts)."""
        assert self.engine is not None
        keys: list[tuple[str, str]] = []
        with self.engine.connect() as conn:
            adapter = conn.execute(select(func.min(_V.adapter))).scalar()
            while adapter is not None:
                judge = conn.execute(select(func.min(_V.judge)).where(_V.adapter == adapter)).scalar()
                while judge is not None:
                    keys.append((adapter, judge))
                    judge = conn.execute(select(func.min(_V.judge)).where(
                        _V.adapter == adapter, _V.judge > judge)).scalar()
                adapter = conn.execute(select(func.min(_V.adapter)).where(_V.adapter > adapter)).scalar()
        return keys

    def load(self, now: float | None = None) -> int:
        """Fill the windows from the store: the last N verdicts per adapter/judge and the last T seconds."""
        assert self.engine is not None
        now = time.time() if now is None else now
        cutoff = datetime.fromtimestamp(now - self.window_seconds, UTC)
        rows: dict[int, VerdictRow] = {}
        with self.engine.connect() as conn:
            max_id = conn.execute(select(func.max(_V.id))).scalar() or 0
            for adapter, judge in self.keys_in_store():
                q = (select(*_COLUMNS).where(_V.adapter == adapter, _V.judge == judge,
                                            _V.id <= max_id)
                     .order_by(_V.id.desc()).limit(self.window_count))
                for r in conn.execute(q):
                    rows[int(r[0])] = _row(r)
            q = select(*_COLUMNS).where(_V.created_at >= cutoff, _V.id <= max_id)
            for r in conn.execute(q):
                rows[int(r[0])] = _row(r)
        with self._lock:
            for vid in sorted(rows):
                self._add(rows[vid])
            self.last_id = max(self.last_id, int(max_id))
        self.expire(now)
        return len(rows)

    def refresh(self, now: float | None = None) -> int:
        """Follow verdicts written since the last call (by id); returns how many were added."""
        assert self.engine is not None
        added = 0
        mono = time.monotonic()
        with self.engine.connect() as conn:
            if self._gaps:
                found = [_row(r) for r in conn.execute(
                    select(*_COLUMNS).where(_V.id.in_(list(self._gaps))))]
                for row in sorted(found, key=lambda r: r.id):
                    self._gaps.pop(row.id, None)
                added += self.add_many(found)
                for vid, first in list(self._gaps.items()):
                    if mono - first > self.gap_grace_s:
                        del self._gaps[vid]
            while True:
                batch = [_row(r) for r in conn.execute(
                    select(*_COLUMNS).where(_V.id > self.last_id)
                    .order_by(_V.id).limit(self.batch_size))]
                if not batch:
                    break
                expected = self.last_id + 1
                for row in batch:
                    for missing in range(expected, row.id):
                        if len(self._gaps) < 10_000:
                            self._gaps[missing] = mono
                    expected = row.id + 1
                added += self.add_many(batch)
                self.last_id = batch[-1].id
                if len(batch) < self.batch_size:
                    break
        self.expire(now)
        return added

    # Read.
    def figures(self, adapter: str, judge: str, window: str = "count") -> WindowFigures | None:
        """One window's figures (None if that adapter/judge has no verdicts)."""
        with self._lock:
            wins = self._windows.get((adapter, judge))
            if wins is None:
                return None
            return self._figures(adapter, judge, window, wins[window])

    def _figures(self, adapter: str, judge: str, window: str, win: RollingWindow) -> WindowFigures:
        first = win.rows[0].id if win.rows else None
        last = win.rows[-1].id if win.rows else None
        return WindowFigures(adapter, judge, window, win.metrics(self.alpha), first, last)

    def snapshot(self) -> list[WindowFigures]:
        """Every window's figures."""
        with self._lock:
            return [self._figures(adapter, judge, kind, wins[kind])
                    for (adapter, judge), wins in sorted(self._windows.items()) for kind in WINDOW_KINDS]

    def divergence(self, adapter: str, judge: str) -> Divergence | None:
        """One judge's divergence from the reference on an adapter's traffic."""
        with self._lock:
            window = self._pairs.get((adapter, judge))
            return None if window is None else window.divergence(adapter, judge, self.reference)

    def divergences(self) -> list[Divergence]:
        """Every judge's divergence from the reference, per adapter."""
        with self._lock:
            return [w.divergence(adapter, judge, self.reference)
                    for (adapter, judge), w in sorted(self._pairs.items())]

    def adapters(self) -> Sequence[str]:
        """Adapters that have verdicts in the windows."""
        with self._lock:
            return sorted({a for a, _ in self._windows})

