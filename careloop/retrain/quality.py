"""Cheap checks on generated text: replies that loop or degenerate."""

from __future__ import annotations

import itertools
import re
import zlib

_WORD = re.compile(r"\w+")


def is_degenerate(text: str, ngram: int = 5, max_repeats: int = 3, max_run: int = 5,
                  min_ratio: float = 0.2) -> bool:
    """Whether a reply loops ("monogamously monogamously…", "1.1.1.1…") rather than says something."""
    stripped = text.strip()
    if len(stripped) < 40:
        return False
    words = _WORD.findall(stripped.lower())
    run = 1
    for prev, word in itertools.pairwise(words):
        run = run + 1 if word == prev else 1
        if run > max_run:
            return True
    counts: dict[tuple[str, ...], int] = {}
    for i in range(len(words) - ngram + 1):
        key = tuple(words[i:i + ngram])
        counts[key] = counts.get(key, 0) + 1
        if counts[key] > max_repeats:
            return True
    raw = stripped.encode()
    return len(raw) > 200 and len(zlib.compress(raw)) / len(raw) < min_ratio
