"""Redact patient identifiers before anything is stored: emails, phones, SSNs, MRNs, dates of birth, addresses.

Rules are regular expressions tuned for precision on clinical text: drug doses (`10/325 mg`), ICD-10 codes
(`E11.9`), vitals (`120/80`) and lab values must survive. Medical record numbers and dates of birth are only
recognised next to a cue (`MRN`, `DOB`, `born on` …) because bare numbers and dates are too ambiguous in
clinical text. Each identifier becomes a typed placeholder such as `[EMAIL]`.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

_MONTHS = (r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|"
           r"sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\.?")
_DATE = (r"(?:\d{1,2}[/.\-]\d{1,2}[/.\-](?:\d{4}|\d{2})"  # 03/14/1962, 14-03-62
         r"|\d{4}-\d{1,2}-\d{1,2}"  # 1962-03-14
         rf"|{_MONTHS}\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}"  # March 14, 1962
         rf"|\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?{_MONTHS},?\s+\d{{4}})")  # 14 March 1962
_STREET_SUFFIX = (r"(?:street|st|avenue|ave|road|rd|boulevard|blvd|lane|ln|drive|dr|court|ct|way|place|pl|"
                  r"terrace|ter|circle|cir|highway|hwy|parkway|pkwy|square|sq|trail|trl)")

# (kind, pattern, group, cues): `group` is the part replaced (0 = the whole match); the rule only runs when one
# of `cues` is in the lower-cased text (None: always, "#digit": when the text has a digit). The cues are
# necessary conditions of each pattern, so skipping is exact, and most texts run two rules instead of nine.
# Order matters: earlier rules win overlaps.
_DIGIT = "#digit"
_RULES: list[tuple[str, re.Pattern[str], int, tuple[str, ...] | None]] = [
    ("EMAIL", re.compile(r"\b[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}\b"), 0, ("@",)),
    ("SSN", re.compile(r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b"), 0, ("-",)),
    ("SSN", re.compile(r"(?i)\b(?:ssn|social security(?: number| no\.?| #)?)\s*(?:is|:|#)?\s*"
                       r"(\d{3}[\s-]?\d{2}[\s-]?\d{4})\b"), 1, ("ssn", "social security")),
    ("MRN", re.compile(r"(?i)\b(?:mrn|medical record(?: number| no\.?| #)?|med\.? rec\.? (?:no\.?|#)|"
                       r"chart (?:number|no\.?|#)|patient (?:id|number|no\.?|#)|record (?:number|no\.?|#))"
                       r"\s*(?:is|was|:|#|=)?\s*#?\s*([A-Z]{0,4}[-]?\d[\dA-Z\-]{4,})\b"), 1,
     ("mrn", "record", "chart", "patient", "rec")),
    ("DOB", re.compile(rf"(?i)\b(?:dob|d\.o\.b\.?|date of birth|birth ?date|born(?: on)?|birthday(?: is)?)"
                       rf"\s*(?:is|was|:|-)?\s*({_DATE})"), 1, ("dob", "d.o.b", "birth", "born")),
    ("PHONE", re.compile(r"(?<![\w/.\-])(?:\+?1[\s.\-]?)?(?:\(\d{3}\)\s?|\d{3}[\s.\-])\d{3}[\s.\-]\d{4}\b"
                         r"(?:\s*(?:x|ext\.?)\s*\d{1,5})?"), 0, (_DIGIT,)),
    ("PHONE", re.compile(r"(?<![\w/.\-])\+(?:[2-9]\d{0,2})[\s.\-]?(?:\(?\d{1,4}\)?[\s.\-]?){2,4}\d{2,4}\b"), 0,
     ("+",)),
    ("ADDRESS", re.compile(r"(?i)\b(?:p\.?\s?o\.?\s+box|post office box)\s+\d+\b"), 0, ("box",)),
    ("ADDRESS", re.compile(
        rf"\b\d{{1,6}}(?:-\d{{1,4}})?\s+(?:[NSEW]\.?\s+|(?:North|South|East|West)\s+)?"
        rf"(?:[A-Z][a-z]+\.?\s+|\d{{1,3}}(?:st|nd|rd|th)\s+){{1,3}}(?i:{_STREET_SUFFIX})\b\.?"
        rf"(?:,?\s+(?i:apt|apartment|unit|suite|ste|#)\.?\s*#?\s*[\w\-]+)?"
        rf"(?:,\s+[A-Z][a-z]+(?:\s+[A-Z][a-z]+)?(?:,\s*[A-Z]{{2}})?(?:\s+\d{{5}}(?:-\d{{4}})?)?)?"), 0, (_DIGIT,)),
]
_HAS_DIGIT = re.compile(r"\d")


@dataclass(frozen=True, slots=True)
class Span:
    """One identifier found in a text."""

    start: int
    end: int
    kind: str


def find_identifiers(text: str) -> list[Span]:
    """Every identifier in `text`, non-overlapping, in order (earlier rules win overlaps)."""
    spans: list[Span] = []
    lower = text.lower()
    has_digit: bool | None = None
    for kind, pattern, group, cues in _RULES:
        if cues is not None:
            if cues[0] == _DIGIT:
                if has_digit is None:
                    has_digit = _HAS_DIGIT.search(text) is not None
                if not has_digit:
                    continue
            elif not any(cue in lower for cue in cues):
                continue
        for match in pattern.finditer(text):
            start, end = match.span(group)
            if any(s.start < end and start < s.end for s in spans):
                continue
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


_CACHE_MAX_CHARS = 8192


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


def redact_messages(messages: Any) -> list[dict[str, Any]]:
    """Chat messages with every text content redacted (string contents and text parts alike)."""
    if not isinstance(messages, list):
        return []
    out: list[dict[str, Any]] = []
    for message in messages:
        if not isinstance(message, dict):
            continue
        clean = dict(message)
        content = clean.get("content")
        if isinstance(content, str):
            clean["content"] = redact(content)
        elif isinstance(content, list):
            parts = []
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    part = {**part, "text": redact(part["text"])}
                parts.append(part)
            clean["content"] = parts
        if isinstance(clean.get("name"), str):
            clean["name"] = redact(clean["name"])
        out.append(clean)
    return out
