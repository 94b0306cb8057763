"""The rules that judge a run's cycles: when DPO is skipped, when a checkpoint is rejected, when the run stops,
and which checkpoint it keeps."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from careloop.core.settings import RetrainSettings


@dataclass
class CycleRecord:
    """One cycle's training and validation figures."""

    cycle: int
    kto: dict[str, Any]
    dpo: dict[str, Any] | None
    dpo_skipped: str | None
    validation: dict[str, Any]
    rejected: str | None
    adapter_dir: str
    seconds: float
    signatures: dict[str, Any] = field(default_factory=dict)  # the design's three failure signatures
    phases: dict[str, float] = field(default_factory=dict)  # seconds per phase of the cycle
    served_as: str | None = None  # the name vLLM serves this checkpoint under as the next cycle's policy


class PhaseClock:
    """Seconds spent in each named phase: `with clock("kto"): ...`."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._name, self._t0 = "", 0.0

    def __call__(self, name: str) -> PhaseClock:
        self._name = name
        return self

    def __enter__(self) -> None:
        self._t0 = time.monotonic()

    def __exit__(self, *exc: object) -> None:
        self.seconds[self._name] = round(self.seconds.get(self._name, 0.0) + time.monotonic() - self._t0, 1)


def failure_signatures(err: float, dpo_skipped: str | None, flat: int, rs: RetrainSettings) -> dict[str, Any]:
    """The design's failure signatures for one cycle: ERR above err_reject, DPO set collapse, Overall flat."""
    return {"err_spike": err > rs.err_reject, "dpo_collapse": bool(dpo_skipped and "collapse" in dpo_skipped),
            "flat_cycles": flat, "flat_stop": flat >= rs.flat_cycles}


def dpo_skip_reason(n_pairs: int, n_kto: int, rs: RetrainSettings, cycle: int = 2) -> str | None:
    """Why DPO is skipped this cycle, or None.

    Cycle 1 runs DPO whenever it has `dpo_min_pairs` pairs; from cycle 2 on, a DPO set under `dpo_min_ratio`
    of the KTO set is the paper's "DPO dataset collapse" signature and ends DPO.
    """
    if not rs.dpo_enabled:
        return "DPO disabled (retrain.dpo_enabled = false)"
    if n_pairs < max(1, rs.dpo_min_pairs):
        return f"DPO set {n_pairs} < {rs.dpo_min_pairs} pairs"
    if cycle > 1 and n_pairs < rs.dpo_min_ratio * n_kto:
        return f"DPO dataset collapse: {n_pairs} pairs < {rs.dpo_min_ratio:.0%} of KTO set {n_kto}"
    return None


def reject_reason(err: float, degenerate: float, rs: RetrainSettings, base_degenerate: float = 0.0) -> str | None:
    """Why a checkpoint is rejected (validation ERR above err_reject; looping more than allowed), or None.

    Looping is judged against the base: a checkpoint may loop up to `max_degenerate`, or up to
    `max_degenerate_increase` above the base model where the base itself already loops more than that.
    """
    if err > rs.err_reject:
        return f"validation ERR {err:.2f} > {rs.err_reject}"
    limit = max(rs.max_degenerate, base_degenerate + rs.max_degenerate_increase)
    if degenerate > limit:
        return f"{degenerate:.0%} degenerate replies > {limit:.0%} (base {base_degenerate:.0%})"
    return None


@dataclass
class GainTracker:
    """Stops a run after `flat_cycles` cycles in a row without an Overall gain above `epsilon`."""

    best: float
    flat_cycles: int
    epsilon: float
    flat: int = 0

    def update(self, overall: float, rejected: bool) -> bool:
        """Count a cycle in; True when the run should stop."""
        if not rejected and overall > self.best + self.epsilon:
            self.best, self.flat = overall, 0
        else:
            self.flat += 1
        return self.flat >= self.flat_cycles


def select_checkpoint(cycles: Sequence[CycleRecord], alpha: float) -> int | None:
    """The cycle whose validation Overall Metric (under `alpha`) is best among those not rejected."""
    best: tuple[float, int] | None = None
    for c in cycles:
        if c.rejected:
            continue
        v = c.validation
        overall = alpha * v["safety_score"] + (1 - alpha) * (1 - v["err"])
        if best is None or overall > best[0] + 1e-12:
            best = (overall, c.cycle)
    return best[1] if best else None
