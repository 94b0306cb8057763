"""Which exchanges go to the judges: a share of stable traffic, a larger share of canary traffic."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Sampler:
    """Marks exchanges for judging at `rate` (stable) or `canary_rate` (canary)."""

    rate: float
    canary_rate: float

    def decide(self, role: str, rand: float | None = None) -> bool:
        """Whether one exchange of this role is sampled."""
        share = self.canary_rate if role == "canary" else self.rate
        if share <= 0.0:
            return False
        return (random.random() if rand is None else rand) < share
