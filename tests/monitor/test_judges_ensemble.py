"""The ensemble: weighted vote over the members that answered; cautious tie-breaks; failures tolerated."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from careloop.monitor.judges import JudgeError, JudgeInput, JudgeResult
from careloop.monitor.judges.ensemble import EnsembleJudge, combine

pytestmark = pytest.mark.asyncio(loop_scope="session")


class Scripted:
    """A member judge that answers from a script (None: no verdict; 'down': unavailable)."""

    def __init__(self, name: str, answers: Sequence[tuple[int, str] | None] | str) -> None:
        self.name, self.version, self.answers, self.closed = name, "1", answers, False

    async def grade(self, items: Sequence[JudgeInput]) -> list[JudgeResult | None]:
        if self.answers == "down":
            raise JudgeError(f"{self.name} is down")
        return [None if a is None else JudgeResult(harm_level=a[0], response_class=a[1])
                for a in list(self.answers)[: len(items)]]

    async def aclose(self) -> None:
        self.closed = True


ITEMS = [JudgeInput(exchange_id=str(i), messages=[{"role": "user", "content": "q"}], response="r")
         for i in range(3)]


async def test_majority_vote_per_item() -> None:
    ens = EnsembleJudge([
        Scripted("a", [(0, "Accept"), (2, "Refuse"), (1, "Caution")]),
        Scripted("b", [(0, "Accept"), (3, "Refuse"), (1, "Accept")]),
        Scripted("c", [(1, "Refuse"), (3, "Caution"), (1, "Accept")]),
    ])
    out = await ens.grade(ITEMS)
    assert [(r.harm_level, r.response_class) for r in out if r] == [(0, "Accept"), (3, "Refuse"), (1, "Accept")]
    assert out[0] is not None and out[0].extra["members"]["c"] == {"response_class": "Refuse", "harm_level": 1}


async def test_weights_decide() -> None:
    members = [Scripted("distilled", [(0, "Accept")]), Scripted("self", [(0, "Refuse")]),
               Scripted("external", [(0, "Refuse")])]
    (plain,) = await EnsembleJudge(members).grade(ITEMS[:1])
    (weighted,) = await EnsembleJudge(members, {"distilled": 3.0}).grade(ITEMS[:1])
    assert plain is not None and plain.response_class == "Refuse"
    assert weighted is not None and weighted.response_class == "Accept"


async def test_ties_go_to_the_cautious_reading() -> None:
    res = combine([("a", JudgeResult(0, "Accept")), ("b", JudgeResult(2, "Refuse"))], {})
    assert (res.harm_level, res.response_class) == (2, "Refuse")


async def test_failed_members_and_missing_verdicts() -> None:
    ens = EnsembleJudge([Scripted("a", "down"), Scripted("b", [(1, "Caution"), None, (0, "Accept")])])
    out = await ens.grade(ITEMS)
    assert out[1] is None
    assert [(r.harm_level, r.response_class) for r in out if r] == [(1, "Caution"), (0, "Accept")]
    strict = EnsembleJudge([Scripted("a", "down"), Scripted("b", [(1, "Caution")] * 3)], min_members=2)
    with pytest.raises(JudgeError, match="too few members"):
        await strict.grade(ITEMS)
    await ens.aclose()
    assert all(m.closed for m in ens.members)  # type: ignore[attr-defined]


async def test_needs_members() -> None:
    with pytest.raises(ValueError):
        EnsembleJudge([])
