"""Redaction of patient identifiers: recall per Safe Harbor category and precision on the evaluation sets, and
every stored field (all roles, parameters, tool calls, media references) redacted."""

from __future__ import annotations

import json
from pathlib import Path

import orjson

from bench.redact_bench import load, score
from careloop.gateway.redact import redact, redact_messages, redact_params

DATA = Path(__file__).parent / "data"


def test_phi_eval_set_meets_the_targets() -> None:
    cases = load(DATA / "phi_eval.jsonl")
    with_phi = [c for c in cases if c["entities"]]
    assert len(with_phi) >= 300 and len(cases) - len(with_phi) >= 150
    kinds = {e["type"] for c in with_phi for e in c["entities"]}
    assert kinds >= {"NAME", "ADDRESS", "LOCATION", "DOB", "DATE", "PHONE", "EMAIL", "SSN", "MRN", "HEALTH_PLAN",
                     "ACCOUNT", "LICENSE", "VEHICLE", "DEVICE", "URL", "IP"}
    s = score(cases)
    low = {k: r for k, r in s["recall"].items() if r < 0.95}
    assert not low, (low, s["misses"][:20])
    assert s["precision"] >= 0.99 and s["clean_precision"] >= 0.99, s["misses"][:20]


def test_earlier_labelled_set_still_holds() -> None:
    s = score(load(DATA / "redaction_cases.jsonl"))
    assert s["min_recall"] >= 0.95 and s["precision"] >= 0.95, s["misses"]


def test_placeholders_and_clinical_content_survive() -> None:
    text = "DOB 03/14/1962, MRN 00483921, metformin 500 mg, E11.9, BP 142/91, call (415) 555-2671."
    assert redact(text) == "DOB [DOB], MRN [MRN], metformin 500 mg, E11.9, BP 142/91, call [PHONE]."
    clinical = "Parkinson's disease, non-Hodgkin lymphoma and Addison's disease; Foley catheter; INR 2.4."
    assert redact(clinical) == clinical


def test_names_with_and_without_titles() -> None:
    assert redact("Dr. Amara Osei saw Mrs Lee") == "Dr. [NAME] saw Mrs [NAME]"
    assert redact("My daughter Zara Kowalczyk called; so did john smith.") == \
        "My daughter [NAME] called; so did [NAME]."


def test_every_role_part_and_tool_call_is_redacted() -> None:
    messages = [
        {"role": "system", "content": "Patient: Margaret Okafor, SSN 482-19-7730."},
        {"role": "user", "content": [{"type": "text", "text": "mail me: a.b@c.org"},
                                     {"type": "image_url", "image_url": {"url": "https://x.org/okafor.png"}},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}],
         "name": "Margaret Okafor"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {
                "name": "lookup", "arguments": json.dumps({"patient": "Margaret Okafor", "mrn": "MRN 00917342"})}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "Okafor, Margaret: phone 617-555-0143"},
    ]
    out = redact_messages(messages)
    text = orjson.dumps(out).decode()
    for value in ("Okafor", "7730", "a.b@c.org", "x.org", "base64", "00917342", "0143"):
        assert value not in text, value
    assert out[0]["role"] == "system" and out[2]["tool_calls"][0]["function"]["name"] == "lookup"
    assert json.loads(out[2]["tool_calls"][0]["function"]["arguments"])["patient"] == "[NAME]"
    assert messages[1]["content"][0]["text"] == "mail me: a.b@c.org"  # type: ignore[index]  # input untouched


def test_every_request_parameter_is_redacted() -> None:
    params = {"temperature": 0.2, "max_tokens": 50, "stop": ["Margaret Okafor"],
              "metadata": {"patient": "Kofi Mensah", "phone": "6175550143"},
              "tools": [{"type": "function", "function": {"name": "f", "description": "for Dr. Osei"}}],
              "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
                  "description": "SSN 482-19-7730"}}}}
    out = orjson.dumps(redact_params(params)).decode()
    for value in ("Okafor", "Mensah", "6175550143", "Osei", "7730"):
        assert value not in out, value
    assert redact_params(params)["temperature"] == 0.2
