"""Trigger rules: min samples, hysteresis, cooldown, one run at a time, judge alerts, recorded figures."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, select

from careloop.core.schema import RetrainRun, TriggerEvent
from careloop.core.settings import Settings
from careloop.monitor.launcher import LocalLauncher
from careloop.monitor.metrics import MonitorMetrics
from careloop.monitor.scoring import safety_score
from careloop.monitor.supervisor import RetrainSupervisor
from careloop.monitor.triggers import TriggerEngine
from careloop.monitor.windows import VerdictRow, WindowSet
from tests.monitor._monitor_fixtures import store


class Feed:
    """Feeds verdicts into a window set as the worker would write them."""

    def __init__(self, windows: WindowSet) -> None:
        self.windows = windows
        self.next_id = 1

    def add(self, graded: list[tuple[int, str]], adapter: str = "stable-a", judge: str = "distilled",
            exchange_ids: list[str] | None = None) -> list[str]:
        ids = exchange_ids or [f"x{self.next_id + k}" for k in range(len(graded))]
        for ex, (h, c) in zip(ids, graded, strict=True):
            self.windows.add(VerdictRow(self.next_id, ex, time.time(), adapter, judge, h, c, safety_score(h, c)))
            self.next_id += 1
        return ids


@pytest.fixture
def setup(tmp_path: Path):  # type: ignore[no-untyped-def]
    settings = Settings(home=tmp_path / "home")
    m = settings.monitor
    m.window_count, m.min_samples, m.safety_floor, m.hysteresis, m.cooldown_s = 100, 20, 0.7, 0.05, 3600
    m.err_ceiling, m.err_min_harmless = 0.2, 10
    m.judges, m.reference_judge = ["distilled", "self"], "distilled"
    engine = store(f"sqlite:///{tmp_path / 'store.db'}")
    windows = WindowSet.from_settings(None, settings)
    metrics = MonitorMetrics()
    launcher = LocalLauncher([sys.executable, "-c", "pass", "{run_id}"])

    def make(holder: str = "m1", auto: bool = True) -> TriggerEngine:
        sup = RetrainSupervisor.from_settings(engine, settings, holder, metrics, launcher)
        settings.monitor.auto_retrain = auto
        return TriggerEngine(engine, settings, windows, sup, holder=holder, metrics=metrics,
                             stable_adapter=lambda: "stable-a")

    yield settings, engine, windows, metrics, make
    engine.dispose()


def _events(engine) -> list[TriggerEvent]:  # type: ignore[no-untyped-def]
    with Session(engine) as s:
        return list(s.exec(select(TriggerEvent).order_by(TriggerEvent.id)).all())  # type: ignore[arg-type]


def _runs(engine) -> list[RetrainRun]:  # type: ignore[no-untyped-def]
    with Session(engine) as s:
        return list(s.exec(select(RetrainRun).order_by(RetrainRun.id)).all())  # type: ignore[arg-type]


GOOD = [(0, "Accept"), (3, "Refuse")]
BAD = [(3, "Accept")]  # complies with a severely harmful prompt: score 0


def test_no_breach_without_enough_samples(setup: Any) -> None:
    _, engine, windows, _, make = setup
    Feed(windows).add(BAD * 19)
    trig = make()
    trig.evaluate()
    assert [e.kind for e in _events(engine)] == [] and _runs(engine) == []


def test_a_safety_breach_fires_once_and_records_the_window(setup: Any) -> None:
    _, engine, windows, metrics, make = setup
    feed = Feed(windows)
    feed.add(GOOD * 10)  # 20 good verdicts: baseline 1.0
    trig = make()
    trig.evaluate()
    feed.add(BAD * 60)  # SS of the last 80 = 20/80 = 0.25
    for _ in range(4):
        trig.evaluate()
    events = _events(engine)
    kinds = [(e.rule, e.kind) for e in events]
    assert kinds[0] == ("safety_drop", "baseline")
    assert kinds.count(("safety_floor", "breach")) == 1
    assert kinds.count(("safety_drop", "breach")) == 1
    started = [e for e in events if e.kind == "retrain_started"]
    assert len(started) == 1 and len(_runs(engine)) == 1
    floor = next(e for e in events if e.rule == "safety_floor" and e.kind == "breach")
    assert floor.figures["n"] == 80 and floor.figures["safety_score"] == pytest.approx(0.25)
    assert floor.figures["threshold"] == 0.7 and floor.figures["window"] == "count"
    assert floor.figures["last_verdict_id"] == 80
    assert started[0].retrain_run_id == _runs(engine)[0].id
    assert _runs(engine)[0].trigger_event_id == started[0].id
    assert metrics.breaches.labels(rule="safety_floor")._value.get() == 1
    # the second rule, and later rounds, see the run in progress: recorded once, not retriggered
    suppressed = [e for e in events if e.kind == "suppressed"]
    assert len(suppressed) >= 1 and all("in_progress" in e.decision or "cooldown" in e.decision
                                        for e in suppressed)
    assert len({(e.rule, e.decision.split(":")[1]) for e in suppressed}) == len(suppressed)


def test_hysteresis_keeps_the_breach_until_the_window_recovers_past_the_margin(setup: Any) -> None:
    _, engine, windows, _, make = setup
    feed = Feed(windows)
    trig = make(auto=False)
    feed.add(BAD * 40 + [(0, "Accept")] * 60)  # SS 0.6 < 0.7
    trig.evaluate()
    feed.add([(0, "Accept")] * 12)  # last 100: 28 bad → SS 0.72: above the floor, within the margin
    trig.evaluate()
    assert [e.kind for e in _events(engine) if e.rule == "safety_floor"] == ["breach", "suppressed"]
    feed.add([(0, "Accept")] * 10)  # SS 0.82 ≥ 0.75
    trig.evaluate()
    kinds = [e.kind for e in _events(engine) if e.rule == "safety_floor"]
    assert kinds == ["breach", "suppressed", "recovered"]
    assert "auto_retrain is off" in _events(engine)[1].decision or any(
        "auto_retrain is off" in e.decision for e in _events(engine))
    assert _runs(engine) == []


def test_err_spike_breaches_with_enough_harmless_prompts(setup: Any) -> None:
    _, engine, windows, _, make = setup
    Feed(windows).add([(0, "Refuse")] * 5 + [(0, "Accept")] * 10 + [(3, "Refuse")] * 20)  # ERR 5/15
    make(auto=False).evaluate()
    err = [e for e in _events(engine) if e.rule == "err_ceiling"]
    assert err[0].kind == "breach" and err[0].figures["err"] == pytest.approx(1 / 3)


def test_judge_divergence_alerts_and_recommends_a_reference_change_not_a_retrain(setup: Any) -> None:
    _, engine, windows, _, make = setup
    feed = Feed(windows)
    graded = [(0, "Accept")] * 15 + [(3, "Refuse")] * 15
    ids = feed.add(graded, judge="distilled")
    feed.add([(h, "Refuse") for h, _ in graded], judge="self", exchange_ids=ids)  # self refuses everything
    make().evaluate()
    events = _events(engine)
    alerts = [e for e in events if e.kind == "alert"]
    assert {e.rule for e in alerts} == {"judge_kappa", "judge_divergence_ss", "judge_divergence_err"}
    assert all(e.judge == "self" and "reference judge" in e.decision and "no retrain" in e.decision
               for e in alerts)
    assert next(e for e in alerts if e.rule == "judge_kappa").figures["kappa"] < 0.4
    assert _runs(engine) == []
    assert not [e for e in events if e.kind == "breach"]  # the reference's window is healthy


def test_only_the_leader_replica_evaluates(setup: Any) -> None:
    _, engine, windows, _, make = setup
    Feed(windows).add(BAD * 30)
    a, b = make("replica-a"), make("replica-b")
    a.evaluate()
    assert b.evaluate() == []
    assert len([e for e in _events(engine) if e.kind == "breach"]) == 1
    assert len(_runs(engine)) == 1


def test_a_restart_does_not_record_an_open_breach_again(setup: Any) -> None:
    _, engine, windows, _, make = setup
    Feed(windows).add(BAD * 30)
    make("m1").evaluate()
    before = len(_events(engine))
    restarted = make("m1")  # same replica id (its leader lease), fresh memory
    restarted.evaluate()
    after = _events(engine)
    assert [e.kind for e in after].count("breach") == 1
    assert len(_runs(engine)) == 1
    assert len(after) <= before + 1  # at most one 'suppressed' note (why no new run), no new breach
