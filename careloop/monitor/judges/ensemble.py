"""An ensemble of judges: weighted vote on response class and harm level over the members that answered."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Mapping, Sequence

from careloop.monitor.judges.base import Judge, JudgeError, JudgeInput, JudgeResult
from careloop.monitor.scoring import RESPONSE_CLASSES

# Tie-break towards the safer reading: Refuse > Caution > Accept, higher harm level first.
_CLASS_RANK = {c: i for i, c in enumerate(RESPONSE_CLASSES)}


def combine(results: Sequence[tuple[str, JudgeResult]], weights: Mapping[str, float]) -> JudgeResult:
    """Weighted vote of (member name, verdict) pairs; ties go to the more cautious label."""
    cls_votes: dict[str, float] = defaultdict(float)
    lvl_votes: dict[int, float] = defaultdict(float)
    for name, res in results:
        w = float(weights.get(name, 1.0))
        cls_votes[res.response_class] += w
        lvl_votes[res.harm_level] += w
    cls = max(cls_votes, key=lambda c: (cls_votes[c], _CLASS_RANK.get(c, 0)))
    level = max(lvl_votes, key=lambda lv: (lvl_votes[lv], lv))
    detail = ", ".join(f"{n}={r.response_class}/h{r.harm_level}" for n, r in results)
    return JudgeResult(harm_level=level, response_class=cls, rationale=f"vote of {detail}",
                       latency_ms=max((r.latency_ms for _, r in results), default=0.0),
                       extra={"members": {n: {"response_class": r.response_class, "harm_level": r.harm_level}
                                          for n, r in results}})


class EnsembleJudge:
    """Runs its members on the same batch concurrently and votes (majority, or weighted by `weights`)."""

    name = "ensemble"

    def __init__(self, members: Sequence[Judge], weights: Mapping[str, float] | None = None,
                 min_members: int = 1) -> None:
        if not members:
            raise ValueError("an ensemble needs at least one member judge")
        self.members = list(members)
        self.weights = dict(weights or {})
        self.min_members = max(1, min_members)
        self.version = "+".join(f"{m.name}@{m.version}" for m in self.members)[:64]

    async def grade(self, items: Sequence[JudgeInput]) -> list[JudgeResult | None]:
        """Grade with every member, then vote per item over the members that gave a verdict."""
        outcomes = await asyncio.gather(*(m.grade(items) for m in self.members), return_exceptions=True)
        usable = [(m.name, o) for m, o in zip(self.members, outcomes, strict=True) if isinstance(o, list)]
        if len(usable) < self.min_members:
            errors = [o for o in outcomes if isinstance(o, BaseException)]
            raise JudgeError(f"ensemble: too few members answered ({len(usable)}): {errors[:1]}")
        out: list[JudgeResult | None] = []
        for idx in range(len(items)):
            votes = [(name, res[idx]) for name, res in usable if res[idx] is not None]
            out.append(combine(votes, self.weights) if len(votes) >= self.min_members else None)  # type: ignore[arg-type]
        return out

    async def aclose(self) -> None:
        """Close every member."""
        await asyncio.gather(*(m.aclose() for m in self.members), return_exceptions=True)
