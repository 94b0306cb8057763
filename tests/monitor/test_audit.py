"""Judge audit: accuracy, κ, confusion, refusal bias, SS/ERR deltas, JSON report."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from careloop.monitor.audit import analyse, audit, format_report, write_report
from careloop.monitor.datasets import LabelledExample
from careloop.monitor.judges import JudgeInput, JudgeResult
from careloop.monitor.scoring import cohen_kappa

pytestmark = pytest.mark.asyncio(loop_scope="session")


def ex(i: int, cls: str, harm: int | None, group: str = "m1", unsafe: bool = False) -> LabelledExample:
    return LabelledExample(id=str(i), messages=[{"role": "user", "content": f"p{i}"}], response=f"r{i}",
                           response_class=cls, harm_level=harm, source="t", group=group,
                           meta={"prompt_label": "unsafe" if unsafe else "safe"})


EXAMPLES = [ex(0, "Accept", 0), ex(1, "Accept", 0), ex(2, "Refuse", None, unsafe=True),
            ex(3, "Caution", None, "m2", unsafe=True), ex(4, "Accept", 0, "m2"), ex(5, "Refuse", None, "m2", True)]
# The judge refuses a harmless prompt (over-call) and accepts a Caution.
JUDGED = [(0, "Accept"), (0, "Refuse"), (3, "Refuse"), (2, "Accept"), (0, "Accept"), (3, "Refuse")]


async def test_analyse_figures() -> None:
    results = [JudgeResult(h, c) for h, c in JUDGED]
    r = analyse("j", "v1", "toy", EXAMPLES, results, seconds=2.0)
    truth = [e.response_class or "" for e in EXAMPLES]
    pred = [c for _, c in JUDGED]
    assert r.n == 6 and r.failed == 0 and r.verdicts_per_s == 3.0
    assert r.accuracy == pytest.approx(4 / 6)
    assert r.kappa == pytest.approx(cohen_kappa(truth, pred))
    assert r.confusion == [[2, 0, 1], [1, 0, 0], [0, 0, 2]]
    assert r.per_class["Accept"]["recall"] == pytest.approx(2 / 3)
    b = r.bias
    assert b["over_refusal"] == pytest.approx(1 / 4) and b["under_refusal"] == 0.0
    assert b["refusal_rate_judge"] > b["refusal_rate_labels"]
    # ERR on the harmless prompts: labels 0/3 refused, judge 1/3.
    assert b["err_labels"] == 0.0 and b["err_judge"] == pytest.approx(1 / 3)
    assert b["ss_delta"] < 0  # the over-call costs safety score (h=0 Refuse scores 0)
    assert set(r.groups) == {"m1", "m2"} and r.groups["m1"]["n"] == 3
    assert r.harm["n"] == 3 and r.harm["accuracy"] == pytest.approx(1.0)
    assert r.harm["known_harmful_detected"] == 1.0
    text = format_report(r)
    assert "kappa" in text and "over-calls 25.0%" in text


async def test_failed_items_are_counted_not_scored() -> None:
    results: list[JudgeResult | None] = [JudgeResult(h, c) for h, c in JUDGED]
    results[1] = None
    r = analyse("j", "v1", "toy", EXAMPLES, results)
    assert r.failed == 1 and r.n == 5 and r.accuracy == pytest.approx(4 / 5)


class Echo:
    """Answers Refuse when the response says sorry, else Accept (a rule-based judge for the audit loop)."""

    name, version = "echo", "0"

    async def grade(self, items: Sequence[JudgeInput]) -> list[JudgeResult | None]:
        return [JudgeResult(0, "Refuse" if "sorry" in i.response else "Accept") for i in items]

    async def aclose(self) -> None:
        return None


async def test_audit_runs_a_judge_in_batches_and_writes_json(tmp_path: Path) -> None:
    data = [LabelledExample(id=str(i), messages=[{"role": "user", "content": "q"}],
                            response="sorry, no" if i % 2 else "sure", response_class="Refuse" if i % 2 else "Accept",
                            harm_level=None, source="t", group="g") for i in range(10)]
    data.append(LabelledExample(id="x", messages=[], response=None, response_class=None, harm_level=0,
                                source="t", group="g"))  # no response: not audited
    seen: list[int] = []
    report = await audit(Echo(), data, "toy", batch_size=3, progress=lambda done, total: seen.append(done))
    assert report.n == 10 and report.kappa == 1.0 and seen == [3, 6, 9, 10]
    path = write_report(report, tmp_path / "out" / "r.json")
    saved = json.loads(path.read_text())
    assert saved["kappa"] == 1.0 and saved["confusion"][2][2] == 5 and saved["judge"] == "echo"
    with pytest.raises(ValueError, match="no labelled responses"):
        await audit(Echo(), data[-1:], "empty")
