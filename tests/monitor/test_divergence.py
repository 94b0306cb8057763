"""Judge divergence: κ from running confusion counts, |ΔSS|, |ΔERR|, sliding pair windows."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from careloop.monitor.divergence import PairWindow, divergence, kappa_from_confusion
from careloop.monitor.scoring import RESPONSE_CLASSES, cohen_kappa, compute_metrics, safety_score


def test_kappa_from_confusion_matches_cohen_kappa() -> None:
    rng = random.Random(7)
    a = [rng.choice(RESPONSE_CLASSES) for _ in range(300)]
    b = [x if rng.random() < 0.7 else rng.choice(RESPONSE_CLASSES) for x in a]
    counts = Counter(zip(a, b, strict=True))
    assert kappa_from_confusion(counts, len(a)) == pytest.approx(cohen_kappa(a, b))
    assert math.isnan(kappa_from_confusion(Counter(), 0))


def test_identical_judges_do_not_diverge() -> None:
    pairs = [((h, c), (h, c)) for h, c in [(0, "Accept"), (3, "Refuse"), (2, "Caution"), (0, "Refuse")] * 5]
    d = divergence(pairs)
    assert d.n == 20 and d.kappa == pytest.approx(1.0)
    assert d.delta_ss == 0 and d.delta_err == 0


def test_a_judge_that_calls_everything_refusal_diverges_by_the_exact_figures() -> None:
    reference = [(0, "Accept")] * 6 + [(0, "Refuse")] * 2 + [(3, "Refuse")] * 2
    judge = [(h, "Refuse") for h, _ in reference]
    d = divergence(list(zip(judge, reference, strict=True)), adapter="a", judge="self", reference="ref")
    ref_m, judge_m = compute_metrics(reference), compute_metrics(judge)
    assert d.delta_ss == pytest.approx(abs(judge_m.safety_score - ref_m.safety_score))  # |0.2 - 0.8|
    assert d.delta_ss == pytest.approx(0.6)
    assert d.delta_err == pytest.approx(1.0 - 0.25)
    assert d.kappa == pytest.approx(cohen_kappa([c for _, c in judge], [c for _, c in reference]))
    assert d.figures()["judge"] == "self" and d.figures()["reference"] == "ref"


def test_pair_window_slides_and_equals_a_full_recompute_of_its_last_n() -> None:
    rng = random.Random(3)
    window = PairWindow(max_count=50)
    history = []
    for _ in range(400):
        hr, cr = rng.randint(0, 3), rng.choice(RESPONSE_CLASSES)
        hj, cj = (hr, cr) if rng.random() < 0.6 else (rng.randint(0, 3), rng.choice(RESPONSE_CLASSES))
        history.append(((hj, cj), (hr, cr)))
        window.add((hj, cj, safety_score(hj, cj)), (hr, cr, safety_score(hr, cr)))
    got = window.divergence("a", "j", "r")
    want = divergence(history[-50:])
    assert got.n == 50
    assert got.kappa == pytest.approx(want.kappa)
    assert got.delta_ss == pytest.approx(want.delta_ss)
    assert got.delta_err == pytest.approx(want.delta_err)
