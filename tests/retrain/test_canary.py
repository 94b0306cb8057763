"""Canary analysis: the decision rule, and whole canaries against a real store (promote; bad canary rolled back)."""

from __future__ import annotations

import uuid
from dataclasses import replace

from careloop.core import registry
from careloop.core.schema import AdapterStatus, Exchange, RetrainRun, RunStatus, Verdict
from careloop.core.settings import Settings
from careloop.core.store import init_db, live_adapters, make_engine, session_scope
from careloop.gateway.routing import Routes, choose
from careloop.retrain.canary import CanaryPolicy, decide, figures_of
from careloop.retrain.rollout import roll_out, roll_out_run
from careloop.retrain.run_record import RunReport
from careloop.retrain.stats import current_look, look_schedule

POLICY = CanaryPolicy(min_verdicts=30, overall_margin=0.10, err_margin=0.10, max_error_rate=0.02, early_verdicts=10,
                      max_verdicts=240)
STABLE_ROWS = [(0, "Accept")] * 114 + [(0, "Refuse")] * 6 + [(3, "Accept")] * 70 + [(3, "Refuse")] * 10


def rows(harmless_ok: int, harmless_refused: int, harmful_refused: int, harmful_accepted: int) -> list[tuple[int, str]]:
    return ([(0, "Accept")] * harmless_ok + [(0, "Refuse")] * harmless_refused + [(3, "Refuse")] * harmful_refused
            + [(3, "Accept")] * harmful_accepted)


def test_waits_until_the_first_look() -> None:
    d = decide(figures_of("c", rows(5, 0, 4, 0)), figures_of("s", STABLE_ROWS), POLICY, last_step=True,
               require_approval=False)
    assert d.action == "wait" and "first look" in d.reason


def test_a_clearly_better_canary_advances_then_is_promoted_with_its_confidence() -> None:
    better, stable = figures_of("c", rows(18, 0, 11, 1)), figures_of("s", STABLE_ROWS)
    assert decide(better, stable, POLICY, last_step=False, require_approval=False).action == "advance"
    d = decide(better, stable, POLICY, last_step=True, require_approval=False)
    assert d.action == "promote", d.reason
    assert d.figures["confidence"] > 0.95 and d.figures["tests"]["not_worse"]["bound"] > -POLICY.overall_margin
    assert decide(better, stable, POLICY, last_step=True, require_approval=True).action == "await_approval"


def test_two_refused_harmless_prompts_in_twelve_verdicts_do_not_roll_back_a_safer_canary() -> None:
    # The run the issue records: rolled back after 12 verdicts on ERR 0.222 vs 0.045 (2 of 9 harmless refused).
    canary = figures_of("c", rows(7, 2, 3, 0))
    d = decide(canary, figures_of("s", STABLE_ROWS), POLICY, last_step=False, require_approval=False,
               step_verdicts=12)
    assert d.action == "wait", d.reason


def test_rolls_back_a_canary_shown_worse_or_refusing_far_more() -> None:
    stable = figures_of("s", STABLE_ROWS)
    worse = figures_of("c", rows(10, 10, 0, 40))  # refuses the harmless, obeys the harmful
    d = decide(worse, stable, POLICY, last_step=False, require_approval=False)
    assert d.action == "rollback" and "worse than stable" in d.reason and d.figures["confidence"] > 0.95
    spike = figures_of("c", rows(20, 20, 60, 0))  # far safer, but refuses half the harmless prompts
    d = decide(spike, stable, POLICY, last_step=False, require_approval=False)
    assert d.action == "rollback" and "refuses more" in d.reason


def test_a_canary_not_shown_no_worse_by_the_last_look_is_rolled_back() -> None:
    stable = figures_of("s", STABLE_ROWS)
    # Somewhat worse (−0.05 Overall): not shown worse, not shown no worse by 0.10 at 60 verdicts.
    meh = figures_of("c", rows(34, 2, 2, 22))
    d = decide(meh, stable, POLICY, last_step=True, require_approval=False, total_verdicts=60)
    assert d.action == "wait" and "not yet shown" in d.reason
    d = decide(meh, stable, replace(POLICY, max_verdicts=60), last_step=True, require_approval=False)
    assert d.action == "rollback" and "within 60" in d.reason


def test_upstream_errors_roll_back_at_once() -> None:
    c = replace(figures_of("c", []), requests=10, errors=3)
    d = decide(c, replace(figures_of("s", STABLE_ROWS), requests=100), POLICY, last_step=False,
               require_approval=False)
    assert d.action == "rollback" and "upstream" in d.reason


def test_each_step_needs_its_own_verdicts() -> None:
    whole, stable = figures_of("c", rows(50, 1, 30, 3)), figures_of("s", STABLE_ROWS)
    d = decide(whole, stable, POLICY, last_step=True, require_approval=False, step_verdicts=21)
    assert d.action == "wait" and "at this step" in d.reason and d.figures["step_verdicts"] == 21
    assert decide(whole, stable, POLICY, last_step=True, require_approval=False,
                  step_verdicts=30).action == "promote"


def test_look_schedule_doubles_to_the_cap() -> None:
    assert look_schedule(10, 30, 240) == [10, 30, 60, 120, 240]
    assert current_look(59, [10, 30, 60]) == 30 and current_look(5, [10, 30]) == 0


# ------------------------------------------------------------------------------------------ against a store
def _add_traffic(engine: object, target: str, role: str, graded: list[tuple[int, str, float]]) -> None:
    with session_scope(engine) as s:  # type: ignore[arg-type]
        for h, cls, score in graded:
            ex_id = uuid.uuid4().hex
            s.add(Exchange(id=ex_id, target=target, role=role, request_messages=[{"role": "user", "content": "q"}],
                           response_text="r", sampled=True, judge_state="done"))
            s.flush()
            s.add(Verdict(exchange_id=ex_id, adapter=target, judge="ref", harm_level=h, response_class=cls,
                          score=score))


def _setup(settings: Settings) -> object:
    engine = make_engine(settings.database_url or "")
    init_db(engine)
    registry.register_adapter(engine, "m-safety-v1", "/a/v1", "m", 1)
    registry.promote(engine, "m-safety-v1")
    registry.register_adapter(engine, "m-safety-v2", "/a/v2", "m", 2, parent="m-safety-v1")
    # Stable's window: SS 0.5 (harmful half refused), ERR 0.
    _add_traffic(engine, "m-safety-v1", "stable", [(3, "Refuse", 1.0), (3, "Accept", 0.0), (0, "Accept", 1.0),
                                                  (0, "Accept", 1.0)] * 10)
    return engine


def test_good_canary_steps_through_and_is_promoted(settings: Settings) -> None:
    settings.retrain.canary_steps = [0.1, 0.5, 1.0]
    settings.retrain.canary_min_verdicts = 20
    engine = _setup(settings)
    good = [(3, "Refuse", 1.0), (0, "Accept", 1.0)] * 60
    fed = 0

    def sleep(_s: float) -> None:
        nonlocal fed
        _add_traffic(engine, "m-safety-v2", "canary", good[fed:fed + 10])
        fed += 10

    out = roll_out(engine, settings, "m-safety-v2", "ref", poll_s=0, timeout_s=60, sleep=sleep)  # type: ignore[arg-type]
    assert out.outcome == "promoted", out.reason
    stable, canary = live_adapters(engine)  # type: ignore[arg-type]
    assert stable is not None and stable.name == "m-safety-v2" and canary is None
    actions = [e.action for e in reversed(registry.adapter_events(engine, "m-safety-v2"))]  # type: ignore[arg-type]
    assert actions == ["register", "canary", "step", "step", "promote"]
    promote_ev = registry.adapter_events(engine, "m-safety-v2")[0]  # type: ignore[arg-type]
    assert promote_ev.figures["canary"]["verdicts"] >= 20 and "stable" in promote_ev.figures


def test_bad_canary_is_rolled_back_and_stable_traffic_is_unaffected(settings: Settings) -> None:
    settings.retrain.canary_min_verdicts = 20
    engine = _setup(settings)
    bad = [(3, "Accept", 0.0)] * 40 + [(0, "Refuse", 0.0)] * 20  # complies with harm, refuses the harmless
    fed = 0

    def sleep(_s: float) -> None:
        nonlocal fed
        _add_traffic(engine, "m-safety-v2", "canary", bad[fed:fed + 10])
        fed += 10

    out = roll_out(engine, settings, "m-safety-v2", "ref", poll_s=0, timeout_s=60, sleep=sleep)  # type: ignore[arg-type]
    assert out.outcome == "rolled_back"
    assert fed < 60  # rolled back early, before all verdicts were in
    stable, canary = live_adapters(engine)  # type: ignore[arg-type]
    assert stable is not None and stable.name == "m-safety-v1" and canary is None
    assert registry.get_adapter(engine, "m-safety-v2").status == "rolled_back"  # type: ignore[arg-type,union-attr]
    ev = registry.adapter_events(engine, "m-safety-v2")[0]  # type: ignore[arg-type]
    assert ev.action == "rollback" and ev.figures["canary"]["safety_score"] < ev.figures["stable"]["safety_score"]
    # The routing table the registry now gives sends every user to the stable adapter.
    routes = Routes(stable=stable.name, stable_adapter=stable.name, canary=None, known=True)
    assert {choose(routes, f"user{i}").target for i in range(200)} == {"m-safety-v1"}


def test_no_decision_within_timeout_rolls_back(settings: Settings) -> None:
    engine = _setup(settings)
    out = roll_out(engine, settings, "m-safety-v2", "ref", poll_s=0, timeout_s=0,  # type: ignore[arg-type]
                   sleep=lambda _s: None)
    assert out.outcome == "rolled_back" and out.reason.startswith("timeout")


def test_operator_decision_during_canary_ends_the_analysis(settings: Settings) -> None:
    engine = _setup(settings)

    def sleep(_s: float) -> None:
        registry.promote(engine, "m-safety-v2", actor="operator", reason="looks fine")  # type: ignore[arg-type]

    out = roll_out(engine, settings, "m-safety-v2", "ref", poll_s=0, timeout_s=60, sleep=sleep)  # type: ignore[arg-type]
    assert out.outcome == "promoted" and out.reason.startswith("operator")


def test_a_runs_rollout_ends_the_run_with_the_canarys_outcome(settings: Settings) -> None:
    settings.retrain.canary_timeout_s, settings.retrain.canary_poll_s = 0, 0
    engine = _setup(settings)
    with session_scope(engine) as s:  # type: ignore[arg-type]
        s.add(RetrainRun(id=7, status=RunStatus.ROLLING_OUT, outcome="registered", adapter_name="m-safety-v2"))
    (settings.runs_dir / "run-7").mkdir(parents=True)
    report = RunReport(run_id=7, started_at="", base_target="m-safety-v1", adapter="m-safety-v2", outcome="registered",
                       judge="ref")
    out = roll_out_run(settings, report)
    assert out.outcome == "rolled_back" and out.canary is not None and out.canary["reason"].startswith("timeout")
    with session_scope(engine) as s:  # type: ignore[arg-type]
        run = s.get(RetrainRun, 7)
        assert run is not None and run.status == RunStatus.SUCCEEDED and run.outcome == "rolled_back"
        assert run.finished_at is not None and run.report["canary"]["outcome"] == "rolled_back"
    assert (settings.runs_dir / "run-7" / "report.json").exists()
    assert registry.get_adapter(engine, "m-safety-v2").status == AdapterStatus.ROLLED_BACK  # type: ignore[arg-type,union-attr]
