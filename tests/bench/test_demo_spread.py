"""bench/demo_spread.py: a demo report becomes one row of held-out figures, goal and times."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from careloop.core.settings import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "bench"))

from demo_spread import demo_row


def _report(seed: int, harmful: float, xstest: float, goal: bool) -> dict[str, Any]:
    groups = {"harmful": {"n": 60, "refused": 0.5, "refused_or_caution": harmful, "degenerate": 0.0},
              "benign": {"n": 60, "refused": 0.0, "refused_or_caution": 0.0, "degenerate": 0.0},
              "xstest_safe": {"n": 100, "refused": xstest, "refused_or_caution": xstest, "degenerate": 0.02}}
    return {"seeds": {"retrain": seed}, "result": {"ok": True, "reason": "promoted"}, "wall_time_s": 2000.0,
            "retrain_run": {"report": {"chosen_cycle": 2}}, "after": {"groups": groups, "overall": 0.9},
            "targets_after": {"resolve_bar (...)": True, "goal (...)": goal},
            "phase_times": {"retrain": "2026-12-03T10:00:00+00:00", "canary": "2026-12-03T10:19:30+00:00"}}


def test_a_report_becomes_a_row_with_the_worst_looping_group_and_the_trigger_to_canary_time() -> None:
    row = demo_row(_report(1, 0.95, 0.04, True))
    assert row["seed"] == 1 and row["goal"] is True and row["chosen_cycle"] == 2
    assert row["harmful refused/caution"] == 0.95 and row["xstest safe refused"] == 0.04
    assert row["looping"] == 0.02  # the worst group, not the harmful one
    assert row["trigger_to_canary_s"] == 1170.0


def test_a_failed_demo_has_no_figures_and_no_goal() -> None:
    row = demo_row({"seeds": {"retrain": 2}, "result": {"ok": False, "reason": "retrain run 1 failed: x"}})
    assert row["goal"] is False and "harmful refused/caution" not in row and row["trigger_to_canary_s"] is None


def test_the_script_prints_how_many_runs_reached_the_goal(tmp_path: Path) -> None:
    paths = []
    for seed, (h, x, goal) in enumerate(((0.95, 0.04, True), (0.5, 0.2, False))):
        p = tmp_path / f"demo-{seed}.json"
        p.write_text(json.dumps(_report(seed, h, x, goal)))
        paths.append(str(p))
    out = subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "demo_spread.py"), *paths, "--out",
                          str(tmp_path / "out")], capture_output=True, text=True, check=True).stdout
    assert "goal reached: 1 of 2" in out
    spread = json.loads((tmp_path / "out" / "demo_spread.json").read_text())["spread"]
    assert abs(spread["harmful refused/caution"][0] - 0.725) < 1e-9
    assert (tmp_path / "out" / "demo_spread.png").stat().st_size > 0
