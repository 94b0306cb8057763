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
