"""Trigger rules over the rolling windows: breaches with hysteresis, retrain decisions, judge alerts.

Retrain rules read the reference judge's window of the stable adapter: Safety Score below a floor, Safety Score
more than `safety_drop` below the adapter's baseline (its first full window), ERR above a ceiling. Judge rules
compare every other judge with the reference (κ, |ΔSS|, |ΔERR|) and only alert: the remedy is a different
reference judge, not a retrain. A rule enters the breached state once (with enough samples) and leaves it only
after recovering past the threshold by the hysteresis margin; each transition and decision is one
`trigger_event` row carrying the window's figures. One replica evaluates (lease "monitor-leader").
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from careloop.core.schema import RetrainRun, TriggerEvent
from careloop.core.settings import Settings
from careloop.core.store import acquire_lease, live_adapters, session_scope
from careloop.monitor.metrics import MonitorMetrics
from careloop.monitor.supervisor import RetrainSupervisor, record_event
from careloop.monitor.windows import WindowFigures, WindowSet

log = logging.getLogger("careloop.monitor.triggers")

LEADER_LEASE = "monitor-leader"
RETRAIN_RULES = ("safety_floor", "safety_drop", "err_ceiling")
JUDGE_RULES = ("judge_kappa", "judge_divergence_ss", "judge_divergence_err")
OPEN_KINDS = ("breach", "suppressed", "retrain_started", "alert")


@dataclass
class RuleState:
    """Where one rule stands for one adapter/judge."""

    breached: bool = False
    suppressed: set[str] = field(default_factory=set)  # reasons already recorded in this episode
    started_run: int | None = None


@dataclass(frozen=True)
class Check:
    """One rule's reading: is it breached, has it recovered, and the figures behind it."""

    rule: str
    adapter: str
    judge: str
    breached: bool
    recovered: bool
    value: float
    threshold: float
    figures: dict[str, Any]


class TriggerEngine:
    """Evaluates the rules, records breaches and decisions, and asks the supervisor for retrain runs."""

    def __init__(self, engine: Engine, settings: Settings, windows: WindowSet,
                 supervisor: RetrainSupervisor | None, *, holder: str, metrics: MonitorMetrics | None = None,
                 stable_adapter: Callable[[], str] | None = None) -> None:
        self.engine = engine
        self.settings = settings
        self.m = settings.monitor
        self.windows = windows
        self.supervisor = supervisor
        self.holder = holder
        self.metrics = metrics
        self._stable_adapter = stable_adapter
        self.states: dict[tuple[str, str, str], RuleState] = {}
        self.baselines: dict[str, float] = {}
        self._loaded = False

    # State kept in the store, so a restart neither forgets a baseline nor re-records an open breach.
    def load_state(self) -> None:
        """Rebuild baselines and open breaches from the latest trigger events."""
        with Session(self.engine) as s:
            events = s.exec(select(TriggerEvent).order_by(TriggerEvent.id.desc()).limit(2000)).all()  # type: ignore[union-attr]
        seen: set[tuple[str, str, str]] = set()
        for ev in events:
            if ev.kind == "baseline" and ev.adapter and ev.adapter not in self.baselines:
                self.baselines[ev.adapter] = float(ev.figures.get("safety_score", 0.0))
                continue
            key = (ev.rule, ev.adapter or "", ev.judge or "")
            if ev.rule not in RETRAIN_RULES + JUDGE_RULES or key in seen:
                continue
            seen.add(key)
            if ev.kind in OPEN_KINDS:
                self.states[key] = RuleState(breached=True, started_run=ev.retrain_run_id)
        self._loaded = True

    def stable_adapter(self) -> str:
        """The adapter serving stable traffic (the base model when the registry has none)."""
        if self._stable_adapter is not None:
            return self._stable_adapter()
        stable, _ = live_adapters(self.engine)
        return stable.name if stable is not None else self.settings.base_model

    # Readings.
    def _window(self, adapter: str) -> WindowFigures | None:
        return self.windows.figures(adapter, self.m.reference_judge, self.m.trigger_window)

    def retrain_checks(self, adapter: str) -> list[Check]:
        """The retrain rules' readings for an adapter (nothing without enough samples)."""
        fig = self._window(adapter)
        if fig is None or fig.metrics.n < self.m.min_samples:
            return []
        m, h = fig.metrics, self.m.hysteresis
        figs = fig.figures()
        checks = [Check("safety_floor", adapter, fig.judge, m.safety_score < self.m.safety_floor,
                        m.safety_score >= self.m.safety_floor + h, m.safety_score, self.m.safety_floor,
                        {**figs, "threshold": self.m.safety_floor})]
        baseline = self.baselines.get(adapter)
        if baseline is not None:
            limit = baseline - self.m.safety_drop
            checks.append(Check("safety_drop", adapter, fig.judge, m.safety_score < limit,
                                m.safety_score >= limit + h, m.safety_score, limit,
                                {**figs, "baseline": baseline, "threshold": limit}))
        if m.harmless >= self.m.err_min_harmless:
            checks.append(Check("err_ceiling", adapter, fig.judge, m.err > self.m.err_ceiling,
                                m.err <= self.m.err_ceiling - h, m.err, self.m.err_ceiling,
                                {**figs, "threshold": self.m.err_ceiling}))
        return checks

    def judge_checks(self) -> list[Check]:
        """Every judge's divergence readings against the reference (nothing without enough pairs)."""
        checks: list[Check] = []
        h = self.m.hysteresis
        for d in self.windows.divergences():
            if d.n < self.m.min_samples:
                continue
            figs = d.figures() | {"adapter": d.adapter}
            checks += [
                Check("judge_kappa", d.adapter, d.judge, d.kappa < self.m.kappa_floor,
                      d.kappa >= self.m.kappa_floor + h, d.kappa, self.m.kappa_floor,
                      figs | {"threshold": self.m.kappa_floor}),
                Check("judge_divergence_ss", d.adapter, d.judge, d.delta_ss > self.m.divergence_ss,
                      d.delta_ss <= self.m.divergence_ss - h, d.delta_ss, self.m.divergence_ss,
                      figs | {"threshold": self.m.divergence_ss}),
                Check("judge_divergence_err", d.adapter, d.judge, d.delta_err > self.m.divergence_err,
                      d.delta_err <= self.m.divergence_err - h, d.delta_err, self.m.divergence_err,
                      figs | {"threshold": self.m.divergence_err}),
            ]
        return checks

    # Evaluation.
    def evaluate(self) -> list[int]:
        """One evaluation round (only on the leader replica); returns the trigger_event ids it wrote."""
        if not acquire_lease(self.engine, LEADER_LEASE, self.holder, self.m.leader_lease_ttl_s):
            return []
        if not self._loaded:
            self.load_state()
        written: list[int] = []
        adapter = self.stable_adapter()
        self._maybe_baseline(adapter, written)
        for check in self.retrain_checks(adapter):
            self._transition(check, written, retrain=True)
        for check in self.judge_checks():
            self._transition(check, written, retrain=False)
        return written

    def _maybe_baseline(self, adapter: str, written: list[int]) -> None:
        if adapter in self.baselines:
            return
        fig = self._window(adapter)
        if fig is None or fig.metrics.n < self.m.min_samples:
            return
        self.baselines[adapter] = fig.metrics.safety_score
        written.append(record_event(
            self.engine, rule="safety_drop", kind="baseline", adapter=adapter, judge=fig.judge,
            decision=f"baseline Safety Score of {adapter}: {fig.metrics.safety_score:.3f} "
                     f"(first window with {fig.metrics.n} verdicts)", figures=fig.figures()))

    def _transition(self, check: Check, written: list[int], *, retrain: bool) -> None:
        key = (check.rule, check.adapter, check.judge)
        state = self.states.setdefault(key, RuleState())
        if not state.breached:
            if not check.breached:
                return
            state.breached, state.suppressed, state.started_run = True, set(), None
            if self.metrics is not None:
                self.metrics.breaches.labels(rule=check.rule).inc()
                self.metrics.trigger_state.labels(rule=check.rule, adapter=check.adapter, judge=check.judge).set(1)
            kind = "breach" if retrain else "alert"
            decision = (self._describe(check) if retrain else
                        f"{self._describe(check)}; judge {check.judge} disagrees with the reference "
                        f"{self.m.reference_judge}: review the judges and consider changing the reference judge "
                        f"(monitor.reference_judge); no retrain")
            written.append(record_event(self.engine, rule=check.rule, kind=kind, adapter=check.adapter,
                                        judge=check.judge, decision=decision, figures=check.figures))
            log.warning("%s: %s", check.rule, decision)
        elif check.recovered:
            state.breached = False
            if self.metrics is not None:
                self.metrics.trigger_state.labels(rule=check.rule, adapter=check.adapter, judge=check.judge).set(0)
            written.append(record_event(self.engine, rule=check.rule, kind="recovered", adapter=check.adapter,
                                        judge=check.judge, decision=f"recovered: {self._describe(check)}",
                                        figures=check.figures))
            return
        if retrain and state.breached:
            self._decide(check, state, written)

    def _describe(self, check: Check) -> str:
        op = "<" if check.rule in ("safety_floor", "safety_drop", "judge_kappa") else ">"
        n = check.figures.get("n")
        return f"{check.rule} on {check.adapter} ({check.judge}): {check.value:.3f} {op} {check.threshold:.3f} (n={n})"

    def _decide(self, check: Check, state: RuleState, written: list[int]) -> None:
        """A breached retrain rule: start a run if the rules allow, else record why not (once per reason)."""
        if not self.m.auto_retrain or self.supervisor is None:
            reason = "auto_retrain is off: retrain recommended"
            if reason not in state.suppressed:
                state.suppressed.add(reason)
                written.append(record_event(self.engine, rule=check.rule, kind="suppressed", adapter=check.adapter,
                                            judge=check.judge, decision=reason, figures=check.figures))
            return
        run, why = self.supervisor.start(base_adapter=check.adapter)
        if run is not None:
            state.started_run = run.id
            state.suppressed = set()
            event_id = record_event(self.engine, rule=check.rule, kind="retrain_started", adapter=check.adapter,
                                    judge=check.judge, figures=check.figures, retrain_run_id=run.id,
                                    decision=f"retrain run {run.id} started: {self._describe(check)}")
            written.append(event_id)
            with session_scope(self.engine) as s:
                row = s.get(RetrainRun, run.id)
                if row is not None and row.trigger_event_id is None:
                    row.trigger_event_id = event_id
                    s.add(row)
            return
        reason = (why or "blocked").split(":")[0]
        if reason not in state.suppressed:
            state.suppressed.add(reason)
            written.append(record_event(self.engine, rule=check.rule, kind="suppressed", adapter=check.adapter,
                                        judge=check.judge, figures=check.figures,
                                        decision=f"retrain not started: {why}"))
