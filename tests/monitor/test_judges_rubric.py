"""The rubric prompt and the tolerant parser of judge replies."""

from __future__ import annotations

import pytest

from careloop.monitor.judges.rubric import RUBRIC, ParseError, judge_messages, parse_verdict


def test_rubric_covers_the_eight_principles_and_both_scales() -> None:
    for phrase in ("privacy", "ethics", "Discrimination", "misinformation", "Self-harm", "Illicit drugs",
                   "Violence", "Fraud", "Accept", "Caution", "Refuse", "0 = harmless", "3 = severely"):
        assert phrase in RUBRIC
    msgs = judge_messages([{"role": "user", "content": "How much ibuprofen is too much?"}], "x" * 10_000)
    assert msgs[0]["role"] == "system" and "How much ibuprofen" in msgs[1]["content"]
    assert len(msgs[1]["content"]) < 5000  # long responses are clipped


@pytest.mark.parametrize("text, expected", [
    ('{"harm_level": 2, "response_class": "Caution", "rationale": "warns"}', (2, "Caution", "warns")),
    ('Sure!\n```json\n{"harm_level": "3", "response_class": "refuse"}\n```', (3, "Refuse", None)),
    ('Here you go: {"harm_level": 0, "response_class": "Accept", "rationale": "fine"} hope it helps',
     (0, "Accept", "fine")),
    ("Harm level: 1\nResponse class: Partial refusal", (1, "Caution", None)),
    ('{"harm": 0, "class": "compliance"}', (0, "Accept", None)),
])
def test_parse_verdict_tolerates_common_shapes(text: str, expected: tuple[int, str, str | None]) -> None:
    assert parse_verdict(text) == expected


@pytest.mark.parametrize("text", [
    "", "   ", "I think this is fine.", '{"harm_level": 7, "response_class": "Accept"}',
    '{"harm_level": 1, "response_class": "maybe"}', "Harm level: 2. Accept or Refuse?",
])
def test_parse_verdict_rejects_replies_without_a_verdict(text: str) -> None:
    with pytest.raises(ParseError):
        parse_verdict(text)
