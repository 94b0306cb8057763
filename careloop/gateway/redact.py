"""Redaction of patient identifiers (HIPAA Safe Harbor) from every field the traffic log stores.

`find_identifiers` runs the pattern rules of `service.phi.rules` (contacts, numbers, dates tied to a person,
addresses, places) and then the name finder of `service.phi.names`; `redact` replaces each span with its
placeholder (`[NAME]`, `[SSN]`, ...). `redact_messages`, `redact_value` and `redact_params` apply it to every
role's content, text parts, tool calls and their arguments, names, image and file references, and every
request parameter. Why rules and word lists rather than an NER model: docs/gateway.md.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

import orjson

from careloop.gateway.phi.names import find_names
from careloop.gateway.phi.rules import DIGIT, GATED

_DIGITS = re.compile(r"\d")
_CACHE_MAX_CHARS = 8192


@dataclass(frozen=True, slots=True)
class Span:
    """One identifier found in a text."""

    start: int
    end: int
    kind: str


def find_identifiers(text: str) -> list[Span]:
    """Every identifier in `text`, non-overlapping, in order (earlier rules win overlaps, names come last)."""
    spans: list[Span] = []
    lower = text.lower()
    ndigits = len(_DIGITS.findall(text))
    for kind, pattern, group, cues, min_digits in GATED:
        if ndigits < min_digits:
            continue
        if cues is not None and cues[0] != DIGIT and not any(cue in lower for cue in cues):
            continue
        for match in pattern.finditer(text):
            start, end = match.span(group)
            if start >= end or any(s.start < end and start < s.end for s in spans):
                continue
            spans.append(Span(start, end, kind))
    for start, end, kind in find_names(text):
        if not any(s.start < end and start < s.end for s in spans):
            spans.append(Span(start, end, kind))
    spans.sort(key=lambda s: s.start)
    return spans


def redact(text: str) -> str:
    """`text` with each identifier replaced by its placeholder, e.g. `[EMAIL]`.

    Short texts are memoised: system prompts and the earlier turns of a conversation come back with every
    request, so most messages the traffic log sees have been redacted before.
    """
    if not text:
        return text
    if len(text) <= _CACHE_MAX_CHARS:
        return _redact_cached(text)
    return _redact(text)


def _redact(text: str) -> str:
    spans = find_identifiers(text)
    if not spans:
        return text
    out: list[str] = []
    pos = 0
    for span in spans:
        out.append(text[pos:span.start])
        out.append(f"[{span.kind}]")
        pos = span.end
    out.append(text[pos:])
    return "".join(out)


_redact_cached = functools.lru_cache(maxsize=16384)(_redact)

# Keys whose string value is a reference to an image, a file or audio: kept only as a placeholder (a data URL
# is the picture itself; a link can name the patient).
_MEDIA_KEYS = frozenset({"url", "image_url", "file_data", "file_url", "data", "audio", "input_audio", "file_id"})


def redact_value(value: Any, key: str | None = None) -> Any:
    """Any JSON value with every string redacted (dict keys kept; media references replaced whole)."""
    if isinstance(value, str):
        if key in _MEDIA_KEYS:
            return "[IMAGE]" if value.startswith("data:image") or key in ("image_url",) else "[URL]"
        if key == "arguments":
            return _redact_json_string(value)
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_value(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_value(v, key) for v in value]
    return value


def _redact_json_string(text: str) -> str:
    """Tool-call arguments: a JSON document in a string, redacted value by value (as text if it is not JSON)."""
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError:
        return redact(text)
    return orjson.dumps(redact_value(parsed)).decode()


def redact_messages(messages: Any) -> list[dict[str, Any]]:
    """Chat messages of every role with everything in them redacted: string contents and text parts, names,
    tool calls and their arguments, image/file/audio parts (placeholders)."""
    if not isinstance(messages, list):
        return []
    out: list[dict[str, Any]] = []
    for message in messages:
        if not isinstance(message, dict):
            continue
        clean: dict[str, Any] = {}
        for k, v in message.items():
            clean[k] = v if k == "role" and isinstance(v, str) else redact_value(v, k)
        out.append(clean)
    return out


def redact_params(params: dict[str, Any]) -> dict[str, Any]:
    """Request parameters (everything but the messages) with every string in them redacted."""
    return {k: redact_value(v, k) for k, v in params.items()}
