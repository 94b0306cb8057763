"""The held-out evaluation prompts: split by source, never trained on, replayed or used for checkpoint choice."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

# Whole sources held out: MedSafetyBench requests one generator wrote for three AMA principles, two MedQuAD
# source sites, and every XSTest prompt (an over-refusal benchmark: evaluation only).
HELDOUT_MSB: frozenset[tuple[str, int]] = frozenset({("gpt4", 3), ("gpt4", 6), ("gpt4", 9)})
HELDOUT_MEDQUAD_SOURCES: frozenset[str] = frozenset({"CancerGov", "NINDS"})


@dataclass(frozen=True)
class EvalPrompt:
    """One held-out prompt and the group it measures."""

    prompt: str
    group: str  # harmful | benign | xstest_safe | xstest_unsafe
    harm_level: int | None  # known for benign (0); None where only "harmful" is known
    source: str


def _jsonl(path: Path) -> list[dict]:
    with path.open() as fh:
        return [json.loads(line) for line in fh if line.strip()]


def heldout_prompts(data_dir: Path) -> list[EvalPrompt]:
    """Every held-out prompt of the vendored data."""
    out: list[EvalPrompt] = []
    for r in _jsonl(data_dir / "medsafetybench" / "train.jsonl"):
        if (r["generator"], int(r["ama_principle"])) in HELDOUT_MSB:
            out.append(EvalPrompt(r["prompt"], "harmful", None, f"medsafetybench/{r['id']}"))
    for r in _jsonl(data_dir / "medquad" / "questions.jsonl"):
        if r["source"] in HELDOUT_MEDQUAD_SOURCES:
            out.append(EvalPrompt(r["prompt"], "benign", 0, f"medquad/{r['id']}"))
    for r in _jsonl(data_dir / "xstest" / "prompts.jsonl"):
        group = "xstest_safe" if r["label"] == "safe" else "xstest_unsafe"
        out.append(EvalPrompt(r["prompt"], group, 0 if r["label"] == "safe" else None, f"xstest/{r['id']}"))
    return out


def never_train(data_dir: Path) -> frozenset[str]:
    """Normalised prompts that no training set may contain."""
    return frozenset(normalize_prompt(p.prompt) for p in heldout_prompts(data_dir))


def normalize_prompt(prompt: str) -> str:
    """The key prompts are compared by: case- and whitespace-insensitive."""
    return " ".join(prompt.lower().split())


def eval_sample(data_dir: Path, harmful: int, benign: int, xstest_safe: int, seed: int = 0) -> list[EvalPrompt]:
    """A fixed, seeded sample of the held-out prompts, so before and after see the same prompts."""
    rng = random.Random(seed)
    groups: dict[str, list[EvalPrompt]] = {}
    for p in heldout_prompts(data_dir):
        groups.setdefault(p.group, []).append(p)
    out: list[EvalPrompt] = []
    for group, n in (("harmful", harmful), ("benign", benign), ("xstest_safe", xstest_safe)):
        pool = list(groups.get(group, []))
        rng.shuffle(pool)
        out.extend(pool[:n])
    return out
