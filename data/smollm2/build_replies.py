"""Generate the SmolLM2-135M replies the project labelled (data/smollm2/README.md), then merge the labels.

    .venv/bin/python data/smollm2/build_replies.py --upstream http://127.0.0.1:8000 --model smollm2-135m
    .venv/bin/python data/smollm2/build_replies.py --merge      # replies.jsonl + labels-*.jsonl → labelled.jsonl

Prompts come from the training side only (no held-out prompt of retrain.heldout, no XSTest prompt): the
vendored MedSafetyBench requests, the project's graded seed set, MedQuAD questions and the borderline set.
Each is answered greedily by the served base model, and a share of them again under a safety system prompt,
so the labelled set also holds the short refusals and cautions a safety-tuned SmolLM2 writes.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from careloop.retrain.datasets import load_borderline_items, load_seed_items  # noqa: E402
from careloop.retrain.generate import chat, generate_sync  # noqa: E402
from careloop.retrain.heldout import never_train, normalize_prompt  # noqa: E402

SAFETY_SYSTEM = ("You are a careful medical assistant. Refuse requests that could harm patients or break medical "
                 "ethics or the law, and explain why; answer ordinary health questions helpfully.")
PLAN = {"medsafetybench": 80, "seed": 80, "medquad": 30, "borderline": 30}  # plain replies per source
SYSTEM_SHARE = {"medsafetybench": 40, "seed": 40, "borderline": 20}  # again under the safety system prompt


def merge() -> None:
    """Join the replies with the labellers' files into labelled.jsonl; every reply must have one label."""
    here = Path(__file__).parent
    replies = [json.loads(line) for line in (here / "replies.jsonl").open()]
    labels: dict[str, dict] = {}
    for path in sorted(here.glob("labels-*.jsonl")):
        for line in path.open():
            row = json.loads(line)
            if row["id"] in labels:
                raise SystemExit(f"{row['id']} labelled twice")
            if row["response_class"] not in ("Accept", "Caution", "Refuse"):
                raise SystemExit(f"{row['id']}: bad label {row['response_class']!r}")
            labels[row["id"]] = row
    missing = [r["id"] for r in replies if r["id"] not in labels]
    if missing:
        raise SystemExit(f"{len(missing)} replies have no label, e.g. {missing[:3]}")
    with (here / "labelled.jsonl").open("w") as fh:
        for r in replies:
            lab = labels[r["id"]]
            fh.write(json.dumps({**r, "response_class": lab["response_class"], "off_topic": lab["off_topic"],
                                 "note": lab.get("note", "")}) + "\n")
    print(f"wrote {len(replies)} labelled replies to {here / 'labelled.jsonl'}")


def main() -> None:
    """Write data/smollm2/replies.jsonl (unlabelled), or merge the labels (--merge)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--upstream", default="http://127.0.0.1:8000")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--merge", action="store_true")
    args = ap.parse_args()
    if args.merge:
        merge()
        return
    data_dir = ROOT / "data"
    banned = never_train(data_dir)
    pool: dict[str, list] = {}
    for item in load_seed_items(data_dir) + load_borderline_items():
        if normalize_prompt(item.prompt) in banned:
            continue
        pool.setdefault(item.source.split(":")[0], []).append(item)
    rng = random.Random(7)
    jobs: list[tuple[str, object, str | None]] = []
    for source, n in PLAN.items():
        chosen = rng.sample(pool[source], n)
        jobs += [(source, it, None) for it in chosen]
        jobs += [(source, it, SAFETY_SYSTEM) for it in chosen[: SYSTEM_SHARE.get(source, 0)]]
    out = generate_sync(args.upstream, args.model, [chat(it.prompt, system) for _, it, system in jobs],  # type: ignore[attr-defined]
                        max_tokens=args.max_tokens, concurrency=16)
    path = Path(__file__).with_name("replies.jsonl")
    with path.open("w") as fh:
        for i, ((source, it, system), g) in enumerate(zip(jobs, out, strict=True)):
            fh.write(json.dumps({
                "id": f"smollm2-{i:03d}", "prompt": it.prompt, "harm_level": it.harm_level,  # type: ignore[attr-defined]
                "source": source, "variant": "safety-system" if system else "plain", "response": g.text,
                "finish_reason": g.finish_reason,
            }) + "\n")
    print(f"wrote {len(jobs)} replies to {path}")


if __name__ == "__main__":
    main()
