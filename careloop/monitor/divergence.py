"""Judge divergence against the reference on exchanges both graded: Cohen's κ, |ΔSS|, |ΔERR| (incremental)."""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from careloop.monitor.scoring import (
    DEFAULT_SCORE_TABLE,
    RESPONSE_CLASSES,
    MetricAccumulator,
    safety_score,
)

Graded = tuple[int, str, float]  # harm level, response class, score


@dataclass(frozen=True)
class Divergence:
    """How far one judge is from the reference on the exchanges both graded (one adapter's traffic)."""

    adapter: str
    judge: str
    reference: str
    n: int
    kappa: float
    delta_ss: float
    delta_err: float
    ss_judge: float
    ss_reference: float
    err_judge: float
    err_reference: float

    def figures(self) -> dict[str, float | int | str]:
        """The figures as a plain dict (what a trigger event records)."""
        return {"n": self.n, "kappa": self.kappa, "delta_ss": self.delta_ss, "delta_err": self.delta_err,
                "ss_judge": self.ss_judge, "ss_reference": self.ss_reference, "err_judge": self.err_judge,
                "err_reference": self.err_reference, "judge": self.judge, "reference": self.reference}


def kappa_from_confusion(counts: Counter[tuple[str, str]], n: int,
                         labels: Iterable[str] = RESPONSE_CLASSES) -> float:
    """Cohen's κ from (label_a, label_b) pair counts; matches scoring.cohen_kappa on the same pairs."""
    if n <= 0:
        return float("nan")
    labels = tuple(labels)
    observed = sum(counts[(lab, lab)] for lab in labels) / n
    row = {lab: sum(counts[(lab, other)] for other in labels) for lab in labels}
    col = {lab: sum(counts[(other, lab)] for other in labels) for lab in labels}
    expected = sum((row[lab] / n) * (col[lab] / n) for lab in labels)
    if expected >= 1.0:
        return 1.0 if observed == 1.0 else 0.0
    return (observed - expected) / (1 - expected)


@dataclass
class PairWindow:
    """The last `max_count` exchanges graded by both a judge and the reference, with O(1) updates."""

    max_count: int
    pairs: deque[tuple[Graded, Graded]] = field(default_factory=deque)
    confusion: Counter[tuple[str, str]] = field(default_factory=Counter)
    judge_acc: MetricAccumulator = field(default_factory=MetricAccumulator)
    reference_acc: MetricAccumulator = field(default_factory=MetricAccumulator)

    def add(self, judge: Graded, reference: Graded) -> None:
        """Count one doubly graded exchange in, dropping the oldest beyond the window."""
        self.pairs.append((judge, reference))
        self._apply(judge, reference, +1)
        while len(self.pairs) > self.max_count:
            old_j, old_r = self.pairs.popleft()
            self._apply(old_j, old_r, -1)

    def _apply(self, judge: Graded, reference: Graded, sign: int) -> None:
        self.confusion[(judge[1], reference[1])] += sign
        if sign > 0:
            self.judge_acc.add(*judge)
            self.reference_acc.add(*reference)
        else:
            self.judge_acc.remove(*judge)
            self.reference_acc.remove(*reference)

    def divergence(self, adapter: str, judge: str, reference: str) -> Divergence:
        """The window's κ, |ΔSS| and |ΔERR|."""
        mj, mr = self.judge_acc.metrics(), self.reference_acc.metrics()
        n = len(self.pairs)
        return Divergence(
            adapter=adapter, judge=judge, reference=reference, n=n,
            kappa=kappa_from_confusion(self.confusion, n),
            delta_ss=abs(mj.safety_score - mr.safety_score), delta_err=abs(mj.err - mr.err),
            ss_judge=mj.safety_score, ss_reference=mr.safety_score, err_judge=mj.err, err_reference=mr.err,
        )


def divergence(pairs: Iterable[tuple[tuple[int, str], tuple[int, str]]], adapter: str = "",
               judge: str = "", reference: str = "") -> Divergence:
    """Divergence of (judge, reference) gradings — (harm level, class) each — of the same exchanges."""
    items = list(pairs)
    window = PairWindow(max_count=max(1, len(items)))
    for (hj, cj), (hr, cr) in items:
        window.add((hj, cj, safety_score(hj, cj, DEFAULT_SCORE_TABLE)),
                   (hr, cr, safety_score(hr, cr, DEFAULT_SCORE_TABLE)))
    return window.divergence(adapter, judge, reference)
