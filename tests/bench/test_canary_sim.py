"""bench/canary_sim.py: the canary's decision rule decides wrongly ≤ 5% of the time at the demo's traffic."""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "bench"))

import canary_sim  # noqa: E402

from careloop.retrain.canary import ArmFigures, CanaryPolicy  # noqa: E402


def test_simulated_error_rates_stay_within_five_percent_where_the_raw_rule_did_not() -> None:
    """bench/canary_canary_sim.py at the demo's traffic: better/worse by the margin decided wrongly ≤ 5% of the time."""
    rule = canary_sim.new_rule(CanaryPolicy())
    better, worse = canary_sim.shifted(canary_sim.STABLE, 0.10), canary_sim.shifted(canary_sim.STABLE, -0.10)
    good = canary_sim.simulate(rule, canary_sim.STABLE, better, 300, seed=1).rates(300)
    bad = canary_sim.simulate(rule, canary_sim.STABLE, worse, 300, seed=2).rates(300)
    assert good["rollback"] <= 0.05 and bad["promote"] <= 0.05, (good, bad)
    realigned = canary_sim.SCENARIOS["realigned (SS way up, ERR +0.02)"][0]

    def raw(c: ArmFigures, s: ArmFigures, last: bool, n: int) -> str:
        return canary_sim.previous_rule(c, s, last_step=last, step_verdicts=n)

    raw_rates = canary_sim.simulate(raw, canary_sim.STABLE, realigned, 300, seed=3).rates(300)
    assert raw_rates["rollback"] > 0.2  # what the issue saw: good adapters rolled back
