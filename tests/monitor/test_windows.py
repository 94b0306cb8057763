"""Rolling windows: count and time bounds, loading only what they need, following new verdicts by id."""

from __future__ import annotations

import random
import time
from datetime import timedelta
from pathlib import Path

import pytest

from careloop.core.schema import Verdict, utcnow
from careloop.monitor.scoring import RESPONSE_CLASSES, compute_metrics, safety_score
from careloop.monitor.windows import RollingWindow, VerdictRow, WindowSet
from tests.monitor._monitor_fixtures import add_verdicts, store


def _rows(graded: list[tuple[int, str]], start_id: int = 1, t0: float = 0.0, step: float = 1.0,
          adapter: str = "a", judge: str = "ref") -> list[VerdictRow]:
    return [VerdictRow(start_id + k, f"x{start_id + k}", t0 + k * step, adapter, judge, h, c, safety_score(h, c))
            for k, (h, c) in enumerate(graded)]


def _random_graded(n: int, seed: int = 1) -> list[tuple[int, str]]:
    rng = random.Random(seed)
    return [(rng.randint(0, 3), rng.choice(RESPONSE_CLASSES)) for _ in range(n)]


def test_count_window_equals_recompute_of_last_n() -> None:
    graded = _random_graded(1000)
    window = RollingWindow(max_count=100)
    for row in _rows(graded):
        window.add(row)
    got, want = window.metrics(0.6), compute_metrics(graded[-100:])
    assert got.n == 100
    assert got.safety_score == pytest.approx(want.safety_score)
    assert got.err == pytest.approx(want.err)
    assert got.f1 == pytest.approx(want.f1)
    assert got.overall == pytest.approx(want.overall)


def test_time_window_drops_what_is_older_than_its_span() -> None:
    graded = _random_graded(300, seed=2)
    window = RollingWindow(max_age_s=60.0)
    for row in _rows(graded, t0=1000.0, step=1.0):  # one verdict a second
        window.add(row)
    window.expire(now=1000.0 + 299)  # keeps t >= 1239 → the last 61
    assert window.metrics(0.6).n == 61
    assert window.metrics(0.6).safety_score == pytest.approx(compute_metrics(graded[-61:]).safety_score)


def test_windows_pair_each_judge_with_the_reference() -> None:
    ws = WindowSet(None, window_count=100, window_seconds=3600, alpha=0.6, reference="ref")
    ref = _rows([(0, "Accept")] * 8 + [(3, "Refuse")] * 2, judge="ref")
    other = [VerdictRow(r.id + 1000, r.exchange_id, r.created_at, "a", "self", r.harm_level, "Refuse",
                        safety_score(r.harm_level, "Refuse")) for r in ref]
    ws.add_many(other[:5])  # the other judge first: pairs form when the reference arrives
    ws.add_many(ref)
    ws.add_many(other[5:])
    d = ws.divergence("a", "self")
    assert d is not None and d.n == 10
    assert d.delta_err == pytest.approx(1.0)
    assert d.delta_ss == pytest.approx(abs(0.2 - 1.0))
    assert ws.divergence("a", "ref") is None


def test_load_reads_only_what_the_windows_need_and_matches_a_full_recompute(tmp_path: Path) -> None:
    engine = store(f"sqlite:///{tmp_path / 's.db'}")
    old = utcnow() - timedelta(days=2)
    graded_a = _random_graded(1500, seed=4)
    add_verdicts(engine, graded_a, adapter="stable-a", judge="ref", created_at=old, step_s=1.0)
    add_verdicts(engine, _random_graded(700, seed=5), adapter="stable-a", judge="self", created_at=old)
    recent = _random_graded(40, seed=6)
    add_verdicts(engine, recent, adapter="canary-b", judge="ref")
    ws = WindowSet(engine, window_count=200, window_seconds=3600, alpha=0.6, reference="ref")
    assert ws.keys_in_store() == [("canary-b", "ref"), ("stable-a", "ref"), ("stable-a", "self")]
    loaded = ws.load()
    assert loaded == 200 + 200 + 40  # not the 2,240 stored
    fig = ws.figures("stable-a", "ref", "count")
    assert fig is not None
    assert fig.metrics.safety_score == pytest.approx(compute_metrics(graded_a[-200:]).safety_score)
    assert ws.figures("stable-a", "ref", "time").metrics.n == 0  # two days old: outside the hour
    assert ws.figures("canary-b", "ref", "time").metrics.n == 40


def test_refresh_follows_new_ids_and_picks_up_ids_that_commit_late(tmp_path: Path) -> None:
    engine = store(f"sqlite:///{tmp_path / 's.db'}")
    ws = WindowSet(engine, window_count=50, window_seconds=3600, alpha=0.6, reference="ref")
    ws.load()
    add_verdicts(engine, [(0, "Accept")] * 5)
    assert ws.refresh() == 5
    assert ws.refresh() == 0

    table = Verdict.metadata.tables["verdict"]

    def insert_with_id(vid: int) -> None:
        with engine.begin() as conn:  # SQLite does not enforce the exchange foreign key
            conn.execute(table.insert(), [{"id": vid, "exchange_id": f"late{vid}", "created_at": utcnow(),
                                           "adapter": "stable-a", "judge": "ref", "judge_version": "",
                                           "harm_level": 3, "response_class": "Accept", "score": 0.0}])

    insert_with_id(8)  # ids 6 and 7 are still in flight in other transactions
    assert ws.refresh() == 1
    insert_with_id(6)
    assert ws.refresh() == 1  # the late id is found through the gap list
    fig = ws.figures("stable-a", "ref")
    assert fig is not None and fig.metrics.n == 7 and fig.last_id == 6


def test_a_new_verdict_costs_the_same_with_a_long_history() -> None:
    """Behavioural proxy for O(1): the windows never hold more than their bound, however much is added."""
    ws = WindowSet(None, window_count=100, window_seconds=10.0, alpha=0.6, reference="ref")
    now = time.time()
    ws.add_many(_rows(_random_graded(20_000, seed=9), t0=now - 20_000 * 0.01, step=0.01))
    ws.expire(now)
    wins = ws._windows[("a", "ref")]
    assert len(wins["count"].rows) == 100
    assert len(wins["time"].rows) <= 1001


@pytest.mark.postgres
def test_load_and_refresh_on_postgres(pg_url: str) -> None:
    engine = store(pg_url)
    try:
        with engine.begin() as conn:
            conn.execute(Verdict.metadata.tables["verdict"].delete())
        graded = _random_graded(300, seed=11)
        add_verdicts(engine, graded, adapter="pg-a", judge="ref")
        ws = WindowSet(engine, window_count=120, window_seconds=3600, alpha=0.6, reference="ref")
        assert ("pg-a", "ref") in ws.keys_in_store()
        ws.load()
        fig = ws.figures("pg-a", "ref", "count")
        assert fig is not None and fig.metrics.n == 120
        assert fig.metrics.safety_score == pytest.approx(compute_metrics(graded[-120:]).safety_score)
        assert ws.figures("pg-a", "ref", "time").metrics.n == 300  # type: ignore[union-attr]
        more = _random_graded(10, seed=12)
        add_verdicts(engine, more, adapter="pg-a", judge="ref")
        assert ws.refresh() == 10
        fig = ws.figures("pg-a", "ref", "count")
        assert fig is not None
        assert fig.metrics.safety_score == pytest.approx(compute_metrics((graded + more)[-120:]).safety_score)
    finally:
        engine.dispose()
