"""The demo plot's rolling series."""

import math

from careloop.report import rolling_series


def test_err_is_blank_until_the_window_holds_enough_harmless_prompts() -> None:
    # (minutes, score, harm level, class): one harmful refused, then harmless prompts, the first of them refused.
    rows = [(0.0, 1.0, 3, "Refuse"), (1.0, 0.0, 0, "Refuse")] + [(2.0 + i, 1.0, 0, "Accept") for i in range(3)]
    xs, ss, err = rolling_series(rows, window=4, min_harmless=3)
    assert xs == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert ss == [1.0, 0.5, 2 / 3, 0.75, 0.75]
    assert all(math.isnan(e) for e in err[:3])  # 0, 1, 2 harmless prompts in the window: no rate
    assert err[3] == 1 / 3  # window rows 0..3: three harmless, one refused
    assert err[4] == 1 / 4  # window rows 1..4: four harmless, one refused


def test_err_counts_from_one_harmless_prompt_when_allowed() -> None:
    _, _, err = rolling_series([(0.0, 0.0, 0, "Refuse")], window=40, min_harmless=0)
    assert err == [1.0]


def test_the_table_says_each_cycle_its_signatures_and_the_result() -> None:
    import io

    from rich.console import Console

    from careloop.report import print_table

    report = {"wall_time_s": 60.0, "failed_requests": 0, "targets_after": {}, "stable_adapter": "a-v1",
              "before": {"groups": {}, "safety_score": 0.7, "err": 0.0, "f1": 0.1, "overall": 0.8},
              "after": {"groups": {}, "safety_score": 0.9, "err": 0.0, "f1": 0.8, "overall": 0.9},
              "decision": {"action": "promote", "adapter": "a-v1"},
              "result": {"ok": True, "reason": "promoted a-v1: not worse"},
              "retrain_run": {"report": {"cycles": [
                  {"cycle": 1, "kto": {"steps": 75}, "dpo": {"steps": 8, "kept": True}, "dpo_skipped": None,
                   "validation": {"overall": 0.81}, "seconds": 900.0, "rejected": None,
                   "signatures": {"err_spike": False, "dpo_collapse": False, "flat_cycles": 0}},
                  {"cycle": 2, "kto": {"steps": 70}, "dpo": None, "dpo_skipped": "DPO dataset collapse: 9 pairs",
                   "validation": {"overall": 0.60}, "seconds": 800.0, "rejected": "validation ERR 0.55 > 0.5",
                   "signatures": {"err_spike": True, "dpo_collapse": True, "flat_cycles": 1}}]}}}
    out = io.StringIO()
    print_table(report, Console(file=out, width=300, force_terminal=False))
    text = out.getvalue()
    assert "cycle 1: KTO 75 steps · DPO 8 steps, kept" in text and "ERR spike no, DPO collapse no" in text
    assert "cycle 2" in text and "ERR spike yes, DPO collapse yes, flat 1" in text and "rejected" in text
    assert "result: ok · promoted a-v1" in text
