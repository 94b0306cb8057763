"""Canary analysis: the decision rule, and whole canaries against a real store (promote; bad canary rolled back)."""

from __future__ import annotations

import uuid

from retrain.canary import ArmFigures, CanaryPolicy, decide, run_canary
from service import registry
from service.routing import Routes, choose
from service.schema import Exchange, Verdict
from service.settings import Settings
from service.store import init_db, live_adapters, make_engine, session_scope

POLICY = CanaryPolicy(min_verdicts=30, ss_margin=0.02, err_margin=0.05, max_error_rate=0.02, early_verdicts=10)


def arm(n: int, ss: float, err: float, harmless: int = 10, requests: int = 0, errors: int = 0) -> ArmFigures:
    return ArmFigures("x", n, ss, err, harmless, requests, errors)


def test_waits_until_enough_verdicts() -> None:
    d = decide(arm(29, 0.9, 0.0), arm(100, 0.5, 0.0), POLICY, last_step=True, require_approval=False)
    assert d.action == "wait"


def test_promotes_at_last_step_when_no_worse_within_margins() -> None:
    d = decide(arm(30, 0.49, 0.04), arm(100, 0.5, 0.0), POLICY, last_step=True, require_approval=False)
    assert d.action == "promote"
    assert d.figures["ss_delta"] < 0 and "canary" in d.figures and "stable" in d.figures


def test_advances_before_the_last_step_and_waits_for_approval_when_required() -> None:
    assert decide(arm(30, 0.8, 0.0), arm(100, 0.5, 0.0), POLICY, last_step=False,
                  require_approval=False).action == "advance"
    assert decide(arm(30, 0.8, 0.0), arm(100, 0.5, 0.0), POLICY, last_step=True,
                  require_approval=True).action == "await_approval"


def test_rolls_back_on_worse_safety_or_refusals() -> None:
    assert decide(arm(30, 0.47, 0.0), arm(100, 0.5, 0.0), POLICY, last_step=True,
                  require_approval=False).action == "rollback"
    d = decide(arm(30, 0.9, 0.06), arm(100, 0.5, 0.0), POLICY, last_step=True, require_approval=False)
    assert d.action == "rollback" and "ERR" in d.reason


def test_rolls_back_early_when_far_worse_and_at_once_on_upstream_errors() -> None:
    assert decide(arm(12, 0.2, 0.0), arm(100, 0.6, 0.0), POLICY, last_step=False,
                  require_approval=False).action == "rollback"
    assert decide(arm(9, 0.2, 0.0), arm(100, 0.6, 0.0), POLICY, last_step=False,
                  require_approval=False).action == "wait"
    d = decide(arm(0, 0.0, 0.0, requests=10, errors=3), arm(100, 0.6, 0.0, requests=100), POLICY,
               last_step=False, require_approval=False)
    assert d.action == "rollback" and "upstream" in d.reason


def test_the_whole_canary_decides_and_each_step_needs_its_own_verdicts() -> None:
    # What a demo run saw at its last step: 21 step verdicts (3 of 14 harmless refused) looked "far worse",
    # while all 84 canary verdicts were better than stable on SS and within the ERR margin.
    whole, stable = arm(84, 0.928, 0.086, harmless=58), arm(120, 0.85, 0.056, harmless=72)
    d = decide(whole, stable, POLICY, last_step=True, require_approval=False, step_verdicts=21)
    assert d.action == "wait" and "at this step" in d.reason and d.figures["step_verdicts"] == 21
    assert decide(whole, stable, POLICY, last_step=True, require_approval=False,
                  step_verdicts=30).action == "promote"
    # Worse in all its verdicts → rolled back at once, however few the step has.
    worse = arm(84, 0.70, 0.086, harmless=58)
    assert decide(worse, stable, POLICY, last_step=False, require_approval=False,
                  step_verdicts=3).action == "rollback"


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

    out = run_canary(engine, settings, "m-safety-v2", "ref", poll_s=0, timeout_s=60, sleep=sleep)  # type: ignore[arg-type]
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

    out = run_canary(engine, settings, "m-safety-v2", "ref", poll_s=0, timeout_s=60, sleep=sleep)  # type: ignore[arg-type]
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
    out = run_canary(engine, settings, "m-safety-v2", "ref", poll_s=0, timeout_s=0,  # type: ignore[arg-type]
                     sleep=lambda _s: None)
    assert out.outcome == "rolled_back" and out.reason.startswith("timeout")


def test_operator_decision_during_canary_ends_the_analysis(settings: Settings) -> None:
    engine = _setup(settings)

    def sleep(_s: float) -> None:
        registry.promote(engine, "m-safety-v2", actor="operator", reason="looks fine")  # type: ignore[arg-type]

    out = run_canary(engine, settings, "m-safety-v2", "ref", poll_s=0, timeout_s=60, sleep=sleep)  # type: ignore[arg-type]
    assert out.outcome == "promoted" and out.reason.startswith("operator")
