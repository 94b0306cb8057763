"""Rolling a registered candidate out: start it as the canary, step it through the settings' fractions, then
promote it or roll it back. The one owner of those steps; `careloop.retrain.canary` decides each of them and
`careloop.core.registry` records them.

`roll_out_run` is what `careloop retrain` runs once its training (`careloop.retrain.run`) has registered a
candidate: the run stays `rolling_out` (without the 'retrain' lease) until the canary ends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy.engine import Engine

from careloop.core import registry, telemetry
from careloop.core.schema import AdapterStatus, RunStatus
from careloop.core.settings import Settings
from careloop.core.store import make_engine
from careloop.retrain.canary import Decision, analyse_once
from careloop.retrain.run_record import Heartbeat, RunReport, finish_run

log = logging.getLogger("careloop.rollout")


@dataclass
class CanaryOutcome:
    """How a canary ended: promoted | rolled_back | awaiting_approval | timeout (rolled back)."""

    adapter: str
    outcome: str
    reason: str
    figures: dict[str, Any]
    steps: list[float]


def roll_out(engine: Engine, settings: Settings, name: str, judge: str, *, poll_s: float | None = None,
             timeout_s: float | None = None, on_tick: Callable[[Decision], None] | None = None,
             sleep: Callable[[float], None] = time.sleep) -> CanaryOutcome:
    """Start `name` (a registered candidate) as the canary and step it through the settings' fractions.

    Promotes after the last step passes (or waits for an operator with require_approval), rolls back at once
    on worse figures or upstream errors, and rolls back when no decision is reached within the timeout.
    """
    rs = settings.retrain
    steps = sorted(rs.canary_steps) or [1.0]
    poll_s = rs.canary_poll_s if poll_s is None else poll_s
    timeout_s = rs.canary_timeout_s if timeout_s is None else timeout_s
    registry.set_canary(engine, name, steps[0], reason="canary analysis started",
                        figures={"steps": steps, "judge": judge})
    deadline = time.monotonic() + timeout_s
    step = 0
    last: Decision | None = None
    while True:
        row = registry.get_adapter(engine, name)
        if row is None or row.status != AdapterStatus.CANARY:  # an operator decided meanwhile
            status = row.status if row is not None else "missing"
            return CanaryOutcome(name, "promoted" if status == AdapterStatus.STABLE else status,
                                 f"operator: {status}", last.figures if last else {}, steps[: step + 1])
        decision = analyse_once(engine, settings, name, judge)
        last = decision
        if on_tick is not None:
            on_tick(decision)
        if decision.action == "rollback":
            registry.rollback(engine, reason=decision.reason, figures=decision.figures)
            return CanaryOutcome(name, "rolled_back", decision.reason, decision.figures, steps[: step + 1])
        if decision.action == "promote":
            registry.promote(engine, name, reason=decision.reason, figures=decision.figures)
            return CanaryOutcome(name, "promoted", decision.reason, decision.figures, steps[: step + 1])
        if decision.action == "await_approval":
            registry.await_approval(engine, name, decision.reason, decision.figures)
            return CanaryOutcome(name, "awaiting_approval", decision.reason, decision.figures, steps[: step + 1])
        if decision.action == "advance":
            step += 1
            registry.set_canary(engine, name, steps[step], reason=decision.reason, figures=decision.figures)
            continue
        if time.monotonic() > deadline:
            reason = f"timeout: no decision within {timeout_s:.0f} s ({decision.reason})"
            registry.rollback(engine, reason=reason, figures=decision.figures)
            return CanaryOutcome(name, "rolled_back", reason, decision.figures, steps[: step + 1])
        sleep(poll_s)


def roll_out_run(settings: Settings, report: RunReport, *,
                 report_cb: Callable[[str], None] | None = None) -> RunReport:
    """Roll out the candidate a run registered and record how its canary ended on the run (row and report)."""
    if report.adapter is None:
        raise ValueError(f"retrain run {report.run_id} registered no candidate to roll out")
    name, judge = report.adapter, report.judge or settings.monitor.reference_judge
    say = report_cb or (lambda msg: log.info("%s", msg))
    engine = make_engine(settings.database_url or "")
    run_dir = settings.runs_dir / f"run-{report.run_id}"
    t0, started_ns = time.monotonic(), time.time_ns()
    status, error = RunStatus.FAILED, None
    try:
        with Heartbeat(engine, report.run_id, settings.retrain.heartbeat_s):
            say(f"canary: {name} at {sorted(settings.retrain.canary_steps)} of users, judged by {judge}")
            result = roll_out(engine, settings, name, judge,
                              on_tick=lambda d: say(f"canary {name}: {d.action}: {d.reason}"))
        report.canary, report.outcome = asdict(result), result.outcome
        say(f"canary {name}: {result.outcome}: {result.reason}")
        status = RunStatus.SUCCEEDED
    except BaseException as exc:  # KeyboardInterrupt/SystemExit too: the run row must say how it ended
        error = f"{type(exc).__name__}: {exc}"
        report.outcome = "failed"
        say(f"run {report.run_id} failed during its canary: {error}")
        raise
    finally:
        report.wall_s = round(report.wall_s + time.monotonic() - t0, 1)
        report.write(run_dir)
        finish_run(engine, report.run_id, status=status, outcome=report.outcome, report=report.as_dict(),
                   error=error)
        engine.dispose()
        telemetry.record_span("retrain rollout", started_ns, time.time_ns(), {
            "careloop.run_id": report.run_id, "careloop.outcome": report.outcome, "careloop.adapter": name},
            error=error)
    return report
