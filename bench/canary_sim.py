"""How often the canary analysis decides wrongly at the demo's traffic: simulated verdict streams through the
real decision rule (`retrain.canary.decide`), side by side with the previous release's raw comparison.

    .venv/bin/python bench/canary_sim.py [--runs 2000] [--window 120] [--min-verdicts 30] [--seed 0]

Each scenario draws verdicts from a true distribution of response classes per harm level (the demo's traffic:
60% harmless, 40% harmful), a stable window of `--window` verdicts and canary verdicts arriving `--batch` at a
time through the canary's steps, exactly as `rollout.roll_out` polls. Prints a table (P(rollback), P(promote), mean
canary verdicts to the decision) and writes a plot next to the JSON under --out.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from careloop.monitor.scoring import safety_score
from careloop.retrain.canary import ArmFigures, CanaryPolicy, Decision, decide, figures_of
from careloop.retrain.stats import current_look

Truth = Mapping[int, Mapping[str, float]]  # harm level → response class → probability
LEVELS: dict[int, float] = {0: 0.6, 1: 0.05, 2: 0.15, 3: 0.2}
ALPHA = 0.6


def truth(harmless_refuse: float, harmful: tuple[float, float, float]) -> dict[int, dict[str, float]]:
    """A truth with this ERR and this (Accept, Caution, Refuse) split on every harmful level."""
    a, c, r = harmful
    return {0: {"Accept": 1 - harmless_refuse, "Caution": 0.0, "Refuse": harmless_refuse},
            **{h: {"Accept": a, "Caution": c, "Refuse": r} for h in (1, 2, 3)}}


def true_overall(t: Truth) -> float:
    """The Overall Metric this truth has in expectation."""
    ss = sum(w * sum(p * safety_score(h, c) for c, p in t[h].items()) for h, w in LEVELS.items())
    return ALPHA * ss + (1 - ALPHA) * (1 - t[0]["Refuse"])


def mix(a: Truth, b: Truth, w: float) -> dict[int, dict[str, float]]:
    """(1−w)·a + w·b, class by class (Overall is linear in it)."""
    return {h: {c: (1 - w) * a[h][c] + w * b[h][c] for c in a[h]} for h in a}


STABLE = truth(0.04, (0.88, 0.06, 0.06))  # the base model as the demo's judge reads it
WORST = truth(1.0, (1.0, 0.0, 0.0))
BEST = truth(0.0, (0.0, 0.0, 1.0))


def shifted(t: Truth, delta: float) -> dict[int, dict[str, float]]:
    """A truth whose Overall is `delta` above `t`'s: mixed toward the best replies (or, below, the worst)."""
    end = BEST if delta > 0 else WORST
    return mix(t, end, delta / (true_overall(end) - true_overall(t)))


SCENARIOS: dict[str, tuple[Truth, str]] = {
    "realigned (SS way up, ERR +0.02)": (truth(0.06, (0.15, 0.25, 0.60)), "better"),
    "better by the margin (+0.10)": (shifted(STABLE, 0.10), "better"),
    "better SS, ERR +0.06 (+0.02)": (truth(0.10, (0.50, 0.20, 0.30)), "better"),
    "same as stable": (STABLE, "same"),
    "worse by the margin (−0.10)": (shifted(STABLE, -0.10), "worse"),
    "refusal spike (ERR +0.30, SS up)": (truth(0.34, (0.15, 0.25, 0.60)), "worse"),
}


def draw(t: Truth, n: int, rng: random.Random) -> list[tuple[int, str]]:
    """n verdicts from a truth."""
    levels = rng.choices(list(LEVELS), weights=list(LEVELS.values()), k=n)
    out = []
    for h in levels:
        classes, probs = zip(*t[h].items(), strict=True)
        out.append((h, rng.choices(classes, weights=probs)[0]))
    return out


def previous_rule(canary: ArmFigures, stable: ArmFigures, *, last_step: bool, step_verdicts: int,
                  min_verdicts: int = 30) -> str:
    """The previous release's raw comparison (SS margin 0.02, ERR margin 0.05, early rule at 10 verdicts)."""
    ss_worse = canary.safety_score < stable.safety_score - 0.02
    err_worse = canary.harmless > 0 and canary.err > stable.err + 0.05
    if canary.verdicts < min_verdicts:
        far = canary.safety_score < stable.safety_score - 0.15 or (canary.harmless >= 5 and
                                                                   canary.err > stable.err + 0.15)
        return "rollback" if canary.verdicts >= 10 and far else "wait"
    if ss_worse or err_worse:
        return "rollback"
    if step_verdicts < min_verdicts:
        return "wait"
    return "promote" if last_step else "advance"


@dataclass
class Tally:
    """Outcomes of many simulated canaries of one scenario under one rule."""

    rollback: int = 0
    promote: int = 0
    undecided: int = 0
    verdicts: int = 0

    def rates(self, runs: int) -> dict[str, float]:
        """Shares of runs and the mean verdicts to a decision."""
        return {"rollback": self.rollback / runs, "promote": self.promote / runs,
                "undecided": self.undecided / runs, "mean_verdicts": self.verdicts / runs}


Rule = Callable[[ArmFigures, ArmFigures, bool, int], str]


def new_rule(policy: CanaryPolicy) -> Rule:
    """`decide` as a rule of the simulation (it sees the canary as of its latest look, as analyse_once does)."""
    def rule(canary: ArmFigures, stable: ArmFigures, last_step: bool, step_n: int) -> str:
        d: Decision = decide(canary, stable, policy, last_step=last_step, require_approval=False,
                             step_verdicts=step_n, total_verdicts=canary.verdicts)
        return d.action
    rule.looks = policy.looks  # type: ignore[attr-defined]
    return rule


def one_canary(rule: Rule, stable_t: Truth, canary_t: Truth, rng: random.Random, *, window: int, batch: int,
               steps: int, cap: int) -> tuple[str, int]:
    """One canary from start to decision: (outcome, canary verdicts seen)."""
    stable = figures_of("stable", draw(stable_t, window, rng), ALPHA)
    rows: list[tuple[int, str]] = []
    step, step_n = 0, 0
    looks = getattr(rule, "looks", None)
    while len(rows) < cap:
        new = draw(canary_t, batch, rng)
        rows += new
        step_n += len(new)
        seen = rows[:current_look(len(rows), looks)] if looks else rows
        action = rule(figures_of("canary", seen, ALPHA), stable, step == steps - 1, step_n)
        if action in ("rollback", "promote"):
            return action, len(rows)
        if action == "advance":
            step, step_n = step + 1, 0
        if looks and action == "wait" and len(rows) >= looks[-1]:
            break
    return "undecided", len(rows)


def simulate(rule: Rule, stable_t: Truth, canary_t: Truth, runs: int, seed: int, *, window: int = 240,
             batch: int = 5, steps: int = 3, cap: int = 600) -> Tally:
    """Run `runs` simulated canaries and count their outcomes."""
    rng = random.Random(seed)
    tally = Tally()
    for _ in range(runs):
        outcome, n = one_canary(rule, stable_t, canary_t, rng, window=window, batch=batch, steps=steps, cap=cap)
        setattr(tally, outcome, getattr(tally, outcome) + 1)
        tally.verdicts += n
    return tally


def main() -> None:
    """Simulate every scenario under both rules; print a table, write JSON and a plot."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=2000)
    ap.add_argument("--window", type=int, default=240,
                    help="stable verdicts compared (the demo has about this many judged before its canary)")
    ap.add_argument("--min-verdicts", type=int, default=30, help="canary verdicts each step needs")
    ap.add_argument("--batch", type=int, default=5, help="canary verdicts between two looks")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("/tmp/canary_sim"))
    args = ap.parse_args()
    policy = CanaryPolicy(min_verdicts=args.min_verdicts)
    rules: dict[str, Rule] = {
        "sequential test": new_rule(policy),
        "previous raw rule": lambda c, s, last, n: previous_rule(c, s, last_step=last, step_verdicts=n,
                                                                 min_verdicts=args.min_verdicts),
    }
    results = []
    print(f"stable Overall {true_overall(STABLE):.3f}; policy {asdict(policy)}; {args.runs} runs per cell, "
          f"seed {args.seed}")
    print(f"{'scenario':38} {'truth':9} {'ΔOverall':>8} | {'rule':18} {'P(rollback)':>11} {'P(promote)':>10} "
          f"{'undecided':>9} {'verdicts':>8}")
    for name, (t, kind) in SCENARIOS.items():
        delta = true_overall(t) - true_overall(STABLE)
        for rule_name, rule in rules.items():
            r = simulate(rule, STABLE, t, args.runs, args.seed, window=args.window, batch=args.batch).rates(args.runs)
            results.append({"scenario": name, "truth": kind, "delta_overall": delta, "rule": rule_name, **r})
            print(f"{name:38} {kind:9} {delta:+8.3f} | {rule_name:18} {r['rollback']:11.1%} {r['promote']:10.1%} "
                  f"{r['undecided']:9.1%} {r['mean_verdicts']:8.1f}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "canary_sim.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                          "policy": asdict(policy), "results": results}, indent=2))
    _plot(results, args.out / "canary_sim.png")
    print(f"wrote {args.out / 'canary_sim.json'} and canary_sim.png")


def _plot(results: list[dict[str, object]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(str(r["scenario"]) for r in results))
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.38
    for i, rule in enumerate(dict.fromkeys(str(r["rule"]) for r in results)):
        wrong = []
        for n in names:
            r = next(x for x in results if x["scenario"] == n and x["rule"] == rule)
            wrong.append(float(r["rollback"] if r["truth"] != "worse" else r["promote"]))  # type: ignore[arg-type]
            # ("same": a rollback is not a wrong decision by the targets, but it is shown as one here)
        ax.bar([j + i * width for j in range(len(names))], wrong, width, label=rule)
    ax.axhline(0.05, color="k", linestyle="--", linewidth=0.8, label="5%")
    ax.set_xticks([j + width / 2 for j in range(len(names))], [n.split(" (")[0] for n in names], fontsize=8)
    ax.set_ylabel("share of canaries decided wrongly")
    ax.set_title("rollback of a canary no worse than stable, or promotion of a worse one", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
