"""Redaction benchmark: recall per Safe Harbor category, precision on the whole set and on clinical texts with no
PHI, and what redaction costs per exchange in the traffic-log writer.

    .venv/bin/python bench/redact_bench.py [--cases tests/gateway/data/phi_eval.jsonl] [--json out.json]

Recall counts an identifier found when every letter and digit of it is gone from the redacted text (whatever
placeholder replaced it). Precision counts a redacted span right when it overlaps a labelled identifier; on the
clean texts any redaction is wrong. Cost is measured on fresh text (the memo cleared), per exchange = one user
message of the set plus a 60-word reply, through `build_row`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from careloop.gateway.redact import _redact_cached, find_identifiers, redact  # noqa: E402

DEFAULT_CASES = ROOT / "tests" / "service" / "data" / "phi_eval.jsonl"
REPLY = ("Metformin is usually taken with meals to reduce stomach upset. A dose of 500 mg twice a day is a common "
         "starting point, and your doctor may raise it to 1000 mg twice a day. Check your blood sugar as advised "
         "and call your care team if you feel dizzy, confused or very tired.")


def load(path: Path) -> list[dict[str, Any]]:
    """The cases of a JSONL evaluation file."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def score(cases: list[dict[str, Any]]) -> dict[str, Any]:
    """Recall per category, precision overall and on clean texts, and every miss and false hit."""
    found: dict[str, int] = defaultdict(int)
    total: dict[str, int] = defaultdict(int)
    true_spans = spans = clean_spans = clean_texts = clean_touched = 0
    misses: list[str] = []
    for case in cases:
        text = case["text"]
        predicted = find_identifiers(text)
        out = redact(text)
        labelled = []
        for ent in case["entities"]:
            start = text.index(ent["value"])
            labelled.append((start, start + len(ent["value"])))
            total[ent["type"]] += 1
            covered = all(any(p.start <= c < p.end for p in predicted) for c in range(start, start + len(ent["value"]))
                          if text[c].isalnum())
            if covered:
                found[ent["type"]] += 1
            else:
                misses.append(f"missed {ent['type']} {ent['value']!r}: {out}")
        if not case["entities"]:
            clean_texts += 1
            clean_spans += len(predicted)
            clean_touched += bool(predicted)
        for p in predicted:
            spans += 1
            if any(p.start < e and s < p.end for s, e in labelled):
                true_spans += 1
            else:
                misses.append(f"false {p.kind} {text[p.start:p.end]!r}: {text}")
    recall = {k: found[k] / total[k] for k in sorted(total)}
    return {"recall": recall, "min_recall": min(recall.values()) if recall else 1.0,
            "identifiers": sum(total.values()), "found": sum(found.values()),
            "precision": true_spans / spans if spans else 1.0,
            "clean_texts": clean_texts, "clean_precision": 1 - clean_touched / clean_texts if clean_texts else 1.0,
            "clean_false_spans": clean_spans, "misses": misses}


def cost(cases: list[dict[str, Any]], rounds: int = 3) -> dict[str, float]:
    """Microseconds of redaction per exchange (uncached), and of the whole `build_row`."""
    from careloop.gateway.record import Record
    from careloop.gateway.rows import build_row

    body = json.dumps({"choices": [{"index": 0, "message": {"content": REPLY}, "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 40, "completion_tokens": 60}}).encode()
    texts = [c["text"] for c in cases]
    per_redact: list[float] = []
    per_row: list[float] = []
    for _ in range(rounds):
        _redact_cached.cache_clear()
        t0 = time.perf_counter()
        for text in texts:
            redact(text)
            redact(REPLY + text[:8])  # a reply the memo has not seen
        per_redact.append((time.perf_counter() - t0) / len(texts) * 1e6)
        _redact_cached.cache_clear()
        records = [Record(f"id{i}", 0.0, "assistant", "base", "stable", None,
                          {"messages": [{"role": "system", "content": "You are a careful clinical assistant."},
                                        {"role": "user", "content": text}], "temperature": 0.2,
                           "metadata": {"note": text[:40]}}, body, 200, False, False, 1.0)
                   for i, text in enumerate(texts)]
        t0 = time.perf_counter()
        for r in records:
            build_row(r)
        per_row.append((time.perf_counter() - t0) / len(records) * 1e6)
    return {"redact_us_per_exchange": statistics.median(per_redact),
            "build_row_us_per_exchange": statistics.median(per_row)}


def main() -> None:
    """Print the figures (and write them as JSON when asked)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=Path, default=DEFAULT_CASES)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--show-misses", action="store_true")
    args = ap.parse_args()
    cases = load(args.cases)
    s = score(cases)
    c = cost(cases)
    print(f"{len(cases)} texts: {sum(1 for x in cases if x['entities'])} with {s['identifiers']} identifiers, "
          f"{s['clean_texts']} clinical texts with none ({args.cases.name})")
    print(f"{'category':<14}{'recall':>8}")
    for kind, r in s["recall"].items():
        print(f"{kind:<14}{r:>8.3f}")
    print(f"precision (redacted spans that are identifiers): {s['precision']:.3f}")
    print(f"clean texts left untouched: {s['clean_precision']:.3f} ({s['clean_false_spans']} false spans)")
    print(f"redaction cost: {c['redact_us_per_exchange']:.0f} us per exchange (uncached); build_row "
          f"{c['build_row_us_per_exchange']:.0f} us per exchange")
    if args.show_misses:
        print("\n".join(s["misses"]))
    if args.json:
        args.json.write_text(json.dumps({**{k: v for k, v in s.items() if k != "misses"}, **c}, indent=2))


if __name__ == "__main__":
    main()
