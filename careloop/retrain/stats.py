"""Statistics behind the loop's automated decisions: group-sequential tests for the canary, a paired bootstrap
for the checkpoint. Each test says what it concluded and with what confidence, so the decision can be audited.

The canary looks at its verdicts a fixed number of times (a look schedule: after `early`, then at `first`
verdicts doubling up to a cap). At each look it runs one-sided z-tests on the difference of means, each at
level α/K (or β/K) for K looks, so that by the union bound the chance of a wrong conclusion over the whole
canary stays within α (or β) whatever the looks see. The stable side is a fixed sample whose own noise is in
every look's standard error. Proportions use Agresti–Caffo pseudo-counts and means two pseudo-observations
(0 and 1), so that a handful of identical verdicts does not read as certainty.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist


@dataclass(frozen=True)
class ArmSample:
    """Sufficient statistics of one arm's per-verdict values: count, mean and (sample) variance."""

    n: int
    mean: float
    var: float


@dataclass(frozen=True)
class DiffBound:
    """A one-sided bound on canary − stable at a stated confidence."""

    metric: str
    diff: float
    se: float
    bound: float
    side: str  # "upper" or "lower"
    confidence: float

    def describe(self) -> str:
        """One line: the metric, its difference and the bound."""
        return (f"{self.metric} Δ {self.diff:+.3f} ({self.side} bound {self.bound:+.3f} "
                f"at {self.confidence:.2%})")


def mean_sample(values: Sequence[float]) -> ArmSample:
    """Count, mean and unbiased variance of per-verdict values."""
    n = len(values)
    if n == 0:
        return ArmSample(0, 0.0, 0.0)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return ArmSample(n, mean, var)


def with_pseudo_observations(sample: ArmSample) -> ArmSample:
    """The sample with one 0 and one 1 added, so that a few identical scores do not read as zero variance."""
    n = sample.n + 2
    total = sample.n * sample.mean + 1.0
    squares = max(sample.n - 1, 0) * sample.var + sample.n * sample.mean ** 2 + 1.0
    mean = total / n
    return ArmSample(n, mean, max(squares - n * mean * mean, 0.0) / (n - 1))


def proportion_sample(successes: int, n: int) -> ArmSample:
    """A proportion with Agresti–Caffo pseudo-counts (one success and one failure added)."""
    p = (successes + 1) / (n + 2)
    return ArmSample(n + 2, p, p * (1 - p))


def diff_bound(metric: str, canary: ArmSample, stable: ArmSample, side: str, confidence: float) -> DiffBound:
    """One-sided normal bound on canary.mean − stable.mean (Welch's standard error)."""
    diff = canary.mean - stable.mean
    se = math.sqrt(canary.var / max(canary.n, 1) + stable.var / max(stable.n, 1))
    z = NormalDist().inv_cdf(confidence)
    bound = diff + z * se if side == "upper" else diff - z * se
    return DiffBound(metric, diff, se, bound, side, confidence)


def look_schedule(early: int, first: int, cap: int) -> list[int]:
    """Verdict counts at which a canary is looked at: `early`, then `first` doubling up to `cap`, and `cap`.

    Doubling keeps the number of looks (and so each look's share of α and β) small while the canary can
    still stop at its first full step.
    """
    looks = {early, cap}
    n = first
    while n < cap:
        looks.add(n)
        n *= 2
    return sorted(k for k in looks if 0 < k <= cap)


def current_look(n: int, schedule: Sequence[int]) -> int:
    """The largest look size reached with n verdicts (0 before the first look)."""
    return max((k for k in schedule if k <= n), default=0)


# ------------------------------------------------------------------------------------------ paired bootstrap
@dataclass(frozen=True)
class PairedComparison:
    """A candidate against a reference on the same prompts: mean gain, its interval and P(gain > 0)."""

    n: int
    gain: float
    low: float
    high: float
    p_better: float
    confidence: float

    @property
    def better(self) -> bool:
        """True when the interval's lower end is above zero."""
        return self.low > 0


def paired_bootstrap(candidate: Sequence[float], reference: Sequence[float], *, confidence: float = 0.9,
                     resamples: int = 2000, seed: int = 0) -> PairedComparison:
    """Bootstrap the mean per-prompt gain of `candidate` over `reference` (same prompts, same order)."""
    if len(candidate) != len(reference):
        raise ValueError("paired samples must have the same length")
    n = len(candidate)
    if n == 0:
        return PairedComparison(0, 0.0, 0.0, 0.0, 0.0, confidence)
    gains = [c - r for c, r in zip(candidate, reference, strict=True)]
    rng = random.Random(seed)
    means = sorted(sum(gains[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    tail = (1 - confidence) / 2
    low, high = means[int(tail * resamples)], means[min(resamples - 1, int((1 - tail) * resamples))]
    p_better = sum(m > 0 for m in means) / resamples
    return PairedComparison(n, sum(gains) / n, low, high, p_better, confidence)
