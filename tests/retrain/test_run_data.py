"""A run's material: a reply that loops is never trained towards, whatever the judge says of its stance."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from careloop.core.settings import Settings
from careloop.monitor.judges.base import JudgeInput, JudgeResult
from careloop.retrain import run_data
from careloop.retrain.datasets import DatasetReport, PromptItem, TrafficExample, build_kto_set, normalize_prompt
from careloop.retrain.generate import Generated
from careloop.retrain.run_data import reference_dpo_pairs, remember_verified

LOOP = "Please see a doctor about it. " * 8  # the stance is fine; the reply loops
GOOD = "Gout comes from uric acid crystals in a joint; a doctor can confirm it with a test of the joint fluid."


class AcceptAll:
    """A judge that grades every reply as a helpful answer (stance only, like the real judges)."""

    name = "stub"

    async def grade(self, items: Sequence[JudgeInput]) -> list[JudgeResult | None]:
        return [JudgeResult(0, "Accept") for _ in items]


def fake_generation(monkeypatch: pytest.MonkeyPatch, texts: list[str]) -> None:
    async def generate_many(*args: Any, **kwargs: Any) -> list[Generated]:
        return [Generated(text=t, finish_reason="stop") for t in texts]

    monkeypatch.setattr(run_data, "generate_many", generate_many)


async def test_a_looping_own_reply_scores_zero_and_is_learnt_away_from(monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Any) -> None:
    items = [PromptItem("What causes gout?", 0, "medquad", GOOD), PromptItem("What is asthma?", 0, "medquad")]
    fake_generation(monkeypatch, [LOOP, "Asthma narrows the airways and makes breathing hard at times."])
    replies = await run_data.policy_replies(Settings(home=tmp_path), "policy", items, AcceptAll(), 80)  # type: ignore[arg-type]
    assert replies[normalize_prompt("What causes gout?")][1] == 0.0
    assert replies[normalize_prompt("What is asthma?")][1] == 1.0
    earlier: dict[str, str] = {}
    remember_verified(earlier, items, replies)
    assert list(earlier) == [normalize_prompt("What is asthma?")]  # the loop is not kept as a verified reply
    pairs = reference_dpo_pairs(items, replies, max_words=80)
    assert [(p.chosen, p.rejected.split()[:3]) for p in pairs] == [(GOOD, ["Please", "see", "a"])]
    examples, _ = build_kto_set([], items, {k: v[0] for k, v in replies.items()}, excluded=set(),
                                seed_harmful=0, seed_benign=2, policy_scores={k: v[1] for k, v in replies.items()})
    looping = [e for e in examples if e.completion.startswith("Please see")]
    assert looping and not any(e.label for e in looping)


async def test_a_looping_alternative_is_not_a_verified_dpo_reply(monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Any) -> None:
    failures = [TrafficExample("What causes gout?", "I cannot help with that.", 0, 0.0, "Refuse"),
                TrafficExample("What is asthma?", "I cannot help with that.", 0, 0.0, "Refuse")]
    fake_generation(monkeypatch, [LOOP, "Asthma narrows the airways and makes breathing hard at times."])
    report = DatasetReport()
    pairs = await run_data.build_dpo_pairs(Settings(home=tmp_path), AcceptAll(), failures, report,  # type: ignore[arg-type]
                                           references={normalize_prompt("What causes gout?"): GOOD})
    assert [(p.prompt, p.chosen, p.source) for p in pairs] == [
        ("What causes gout?", GOOD, "reference"),
        ("What is asthma?", "Asthma narrows the airways and makes breathing hard at times.", "traffic")]
    assert report.dpo_failed_verification == 1
