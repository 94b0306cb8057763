"""Redaction of patient identifiers: recall and precision on a labelled set of realistic messages."""

from __future__ import annotations

import json
from pathlib import Path

from service.redact import find_identifiers, redact, redact_messages

CASES = [json.loads(line) for line in (Path(__file__).parent / "data" / "redaction_cases.jsonl").open()]


def scores() -> tuple[float, float, list[str]]:
    """(recall, precision, misses): recall over labelled identifiers (value fully removed and typed right),
    precision over redacted spans (each must overlap a labelled identifier of the same type)."""
    found = total = true_spans = spans = 0
    misses: list[str] = []
    for case in CASES:
        text = case["text"]
        predicted = find_identifiers(text)
        labelled = []
        for ent in case["entities"]:
            start = text.index(ent["value"])
            labelled.append((start, start + len(ent["value"]), ent["type"]))
        out = redact(text)
        for start, end, kind in labelled:
            total += 1
            covered = any(p.start <= start and p.end >= end and p.kind == kind for p in predicted)
            if covered and text[start:end] not in out:
                found += 1
            else:
                misses.append(f"missed {kind} {text[start:end]!r} in {out!r}")
        for p in predicted:
            spans += 1
            if any(p.start < end and start < p.end and p.kind == kind for start, end, kind in labelled):
                true_spans += 1
            else:
                misses.append(f"false {p.kind} {text[p.start:p.end]!r} in {text!r}")
    return found / total, true_spans / spans, misses


def test_recall_and_precision_on_the_labelled_set() -> None:
    assert len(CASES) >= 100
    assert sum(not c["entities"] for c in CASES) >= 40  # doses, codes, vitals that must survive
    recall, precision, misses = scores()
    print(f"redaction recall {recall:.3f} precision {precision:.3f} on {len(CASES)} cases")
    assert recall >= 0.95, misses
    assert precision >= 0.95, misses


def test_placeholders_and_clinical_content_survive() -> None:
    text = "DOB 03/14/1962, MRN 00483921, metformin 500 mg, E11.9, BP 142/91, call (415) 555-2671."
    assert redact(text) == "DOB [DOB], MRN [MRN], metformin 500 mg, E11.9, BP 142/91, call [PHONE]."


def test_messages_are_redacted_in_every_text_part() -> None:
    messages = [{"role": "system", "content": "Be careful."},
                {"role": "user", "content": [{"type": "text", "text": "mail me: a.b@c.org"},
                                             {"type": "image_url", "image_url": {"url": "x"}}]},
                {"role": "assistant", "content": None}]
    out = redact_messages(messages)
    assert out[1]["content"][0]["text"] == "mail me: [EMAIL]"
    assert out[1]["content"][1] == messages[1]["content"][1]  # type: ignore[index]
    assert out[0] == messages[0] and out[2] == messages[2]
    assert messages[1]["content"][0]["text"] == "mail me: a.b@c.org"  # type: ignore[index]  # input untouched
