"""Training and validation sets: KTO examples from judged traffic plus a vendored seed mix, DPO pairs, splits.

Rules kept here: prompts are deduplicated (case/space-insensitive); the validation split is chosen by a hash
of the whole prompt, stratified by harm level, so it is the same in every cycle and run and training never
sees it; evaluation-only prompts (XSTest) are never trained on.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BORDERLINE_FILE = Path(__file__).with_name("borderline.jsonl")

# What the score table wants for each harm level: the instruction used to generate DPO alternatives.
BEHAVIOUR: dict[int, str] = {
    0: ("Answer the question fully, clearly and helpfully. It is a legitimate health question: do not refuse "
        "and do not lecture."),
    1: ("Answer with caution: give safe, general information, point out the risks, and advise seeing a "
        "qualified clinician."),
    2: ("Answer with caution: do not give anything that could cause harm; explain the ethical or safety "
        "concern in one sentence and offer a safe alternative."),
    3: ("Refuse this request politely in one or two sentences, say briefly why it is harmful or unethical "
        "for this specific request, and offer a safe, ethical alternative."),
}

# Refusals of benign prompts, used as the undesirable side for borderline-but-benign prompts.
_REFUSAL_TEMPLATES = (
    "I'm sorry, but I can't help with that.",
    "I'm sorry, but I cannot provide information on this topic.",
    "I cannot assist with this request.",
)


@dataclass(frozen=True)
class PromptItem:
    """A prompt with its (judged or known) harm level and where it came from."""

    prompt: str
    harm_level: int
    source: str
    reference: str | None = None  # a known good completion (seed data)
    group: str | None = None  # prompts of one group (phrasings of one base prompt) never straddle a split

    @property
    def group_key(self) -> str:
        """What splits keep together."""
        return normalize_prompt(self.group or self.prompt)


@dataclass(frozen=True)
class KTOExample:
    """One KTO row: prompt, completion, desirable or not."""

    prompt: str
    completion: str
    label: bool
    source: str
    harm_level: int


@dataclass(frozen=True)
class DPOPair:
    """One DPO row: the verified alternative (chosen) over the original reply (rejected)."""

    prompt: str
    chosen: str
    rejected: str
    source: str
    harm_level: int


@dataclass
class DatasetReport:
    """What went into a run's sets (recorded with the run)."""

    kto: dict[str, int] = field(default_factory=dict)
    dpo: dict[str, int] = field(default_factory=dict)
    validation: dict[str, int] = field(default_factory=dict)
    excluded: int = 0
    duplicates: int = 0
    dpo_candidates: int = 0
    dpo_failed_verification: int = 0

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return asdict(self)


def normalize_prompt(prompt: str) -> str:
    """The dedupe key of a prompt: lower case, single spaces, no trailing punctuation."""
    return re.sub(r"\s+", " ", prompt).strip().lower().rstrip("?.! ")


def prompt_hash(prompt: str, salt: str = "") -> float:
    """A stable number in [0, 1) per prompt (same in every process), for deterministic splits."""
    digest = hashlib.sha256((salt + normalize_prompt(prompt)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def dedupe(items: Iterable[PromptItem]) -> tuple[list[PromptItem], int]:
    """First occurrence of each prompt; also how many duplicates were dropped."""
    seen: set[str] = set()
    out: list[PromptItem] = []
    dropped = 0
    for item in items:
        key = normalize_prompt(item.prompt)
        if not key:
            dropped += 1
            continue
        if key in seen:
            dropped += 1
            continue
        seen.add(key)
        out.append(item)
    return out, dropped


def stratified_split(items: Sequence[PromptItem], size: int, salt: str = "val") -> tuple[list[PromptItem],
                                                                                         list[PromptItem]]:
    """(train, validation): about `size` prompts held out, an equal share per harm level and source, by hash.

    Whole groups move together (all phrasings of one base prompt land on the same side); each harm level keeps
    at least one validation prompt when it has two or more.
    """
    unique, _ = dedupe(items)
    # Strata: harm level × source, so borderline seed prompts and reference questions both get a share.
    by_level: dict[tuple[int, str], list[PromptItem]] = defaultdict(list)
    for item in unique:
        by_level[(item.harm_level, item.source)].append(item)
    total = len(unique)
    if total == 0 or size <= 0:
        return list(unique), []
    size = min(size, total // 2 if total > 1 else 0)
    val_groups: set[str] = set()
    for _level, members in sorted(by_level.items()):
        # Equal shares per stratum (a validation set dominated by harmless prompts would hide safety changes).
        want = size // len(by_level)
        if len(members) >= 2:
            want = max(1, want)
        want = min(want, len(members) - 1) if len(members) > 1 else 0
        sizes: dict[str, int] = defaultdict(int)
        for it in members:
            sizes[it.group_key] += 1
        count = 0
        for key in sorted(sizes, key=lambda k: prompt_hash(k, salt)):
            if count >= want or count + sizes[key] > max(want, 1) * 1.5:
                continue
            val_groups.add(key)
            count += sizes[key]
    train = [it for it in unique if it.group_key not in val_groups]
    val = [it for it in unique if it.group_key in val_groups]
    return train, val


def split_by_hash(items: Sequence[PromptItem], size: int, salt: str = "val") -> tuple[list[PromptItem],
                                                                                     list[PromptItem]]:
    """(train, validation): the `size` items first in hash order held out, the same in every run."""
    unique, _ = dedupe(items)
    held = {normalize_prompt(it.prompt) for it in sorted(unique, key=lambda it: prompt_hash(it.prompt, salt))[:size]}
    return ([it for it in unique if normalize_prompt(it.prompt) not in held],
            [it for it in unique if normalize_prompt(it.prompt) in held])


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{n}: not JSON: {exc}") from exc
    return rows


def load_seed_items(data_dir: Path) -> list[PromptItem]:
    """The vendored seed prompts: MedSafetyBench (harmful, safe reply), MedQuAD (benign, reference answer)
    and, when present, the graded seed set under data/seed/ (levels 0-3)."""
    items: list[PromptItem] = []
    for row in _read_jsonl(data_dir / "medsafetybench" / "train.jsonl"):
        items.append(PromptItem(row["prompt"], 3, "medsafetybench", row.get("safe_response")))
    for row in _read_jsonl(data_dir / "medquad" / "questions.jsonl"):
        if row.get("answer"):
            items.append(PromptItem(row["prompt"], 0, "medquad", row["answer"]))
    seed_dir = data_dir / "seed"
    if seed_dir.is_dir():
        for path in sorted(seed_dir.glob("*.jsonl")):
            for row in _read_jsonl(path):
                level = row.get("harm_level", row.get("harmful_level"))
                if isinstance(level, int) and 0 <= level <= 3 and row.get("prompt"):
                    items.append(PromptItem(row["prompt"], level, f"seed:{path.stem}",
                                            row.get("response") or row.get("safe_response"),
                                            group=row.get("base_prompt")))
    return items


def load_borderline_items() -> list[PromptItem]:
    """Hand-written prompts that sound risky but are benign (harm level 0): trained to be answered."""
    return [PromptItem(r["prompt"], 0, "borderline") for r in _read_jsonl(BORDERLINE_FILE)]


def xstest_items(data_dir: Path, label: str = "safe") -> list[PromptItem]:
    """XSTest prompts with the given label ('safe' → harm level 0, 'unsafe' → 3); evaluation only."""
    return [PromptItem(r["prompt"], 0 if label == "safe" else 3, "xstest")
            for r in _read_jsonl(data_dir / "xstest" / "prompts.jsonl") if r.get("label") == label]


def truncate_words(text: str, max_words: int) -> str:
    """The first `max_words` words, cut back to the last full sentence when one ends in the second half."""
    words = text.split()
    if len(words) <= max_words:
        return text.strip()
    cut = " ".join(words[:max_words])
    end = max(cut.rfind(". "), cut.rfind(".\n"), cut.rfind("! "))
    if end > len(cut) // 2:
        return cut[: end + 1]
    return cut


@dataclass(frozen=True)
class TrafficExample:
    """A judged exchange as training material."""

    prompt: str
    completion: str
    harm_level: int
    score: float
    response_class: str


def build_kto_set(traffic: Sequence[TrafficExample], seed_pool: Sequence[PromptItem],
                  own_answers: dict[str, str], *, excluded: set[str], seed_harmful: int, seed_benign: int,
                  borderline: Sequence[PromptItem] = (), max_completion_words: int = 80,
                  rng_seed: int = 0, policy_scores: dict[str, float] | None = None,
                  earlier: dict[str, str] | None = None,
                  refusal_contrast: bool = True) -> tuple[list[KTOExample], DatasetReport]:
    """The KTO set: judged traffic (Safety Score 1 → desirable) plus the seed mix.

    Seed mix: MedSafetyBench safe replies as desirable for harmful prompts, and the model's own answer to the
    same prompt, when known, beside it: undesirable when it fails (that ties the refusal to the prompt), desirable
    when it already refuses (the policy's own refusal is held, not only the reference's long reply); for benign
    and borderline prompts the model's own helpful answer (`own_answers`, judged Accept) as desirable and a refusal as
    undesirable, so refusing is learnt as wrong for questions that only sound risky. With `policy_scores`
    (the reference judge's Safety Score of each own answer) an own answer is desirable exactly when it scored 1;
    without, own answers to harmful prompts count as undesirable and to benign ones as desirable. Where the policy
    fails a benign or borderline prompt, a reply an earlier policy wrote and the judge verified (`earlier`) is the
    desirable side, so a later cycle still has an answer to move towards. With `refusal_contrast` the short
    refusals that are undesirable on harmless prompts are desirable on harmful ones too, so the set teaches when to
    refuse and never pushes against refusal-shaped text as such.
    """
    rng = random.Random(rng_seed)
    report = DatasetReport()
    out: list[KTOExample] = []
    seen: set[tuple[str, bool, str]] = set()

    def add(prompt: str, completion: str, label: bool, source: str, level: int, second: bool = False) -> None:
        """Add one example; a prompt has one per label, or with `second` one more with a different reply."""
        key = normalize_prompt(prompt)
        if key in excluded:
            report.excluded += 1
            return
        ident = (key, label, completion if second else "")
        if ident in seen or not completion.strip():
            report.duplicates += 1
            return
        seen.add(ident)
        out.append(KTOExample(prompt, truncate_words(completion, max_completion_words), label, source, level))
        report.kto[f"{source}:{'desirable' if label else 'undesirable'}"] = \
            report.kto.get(f"{source}:{'desirable' if label else 'undesirable'}", 0) + 1

    for ex in traffic:
        add(ex.prompt, ex.completion, ex.score >= 1.0, "traffic", ex.harm_level)
    harmful = [it for it in seed_pool if it.harm_level >= 1 and it.reference]
    benign = [it for it in seed_pool if it.harm_level == 0]
    rng.shuffle(harmful)
    rng.shuffle(benign)
    def own_label(key: str, default: bool) -> bool:
        if policy_scores is None or key not in policy_scores:
            return default
        return policy_scores[key] >= 1.0

    refusals = list(_REFUSAL_TEMPLATES)
    for i, it in enumerate(harmful[:seed_harmful]):
        add(it.prompt, it.reference or "", True, it.source, it.harm_level)
        key = normalize_prompt(it.prompt)
        own = own_answers.get(key)
        if own:  # a refusal the policy already writes is reinforced in its own words, beside the reference
            add(it.prompt, own, own_label(key, False), it.source, it.harm_level, second=True)
        if refusal_contrast:  # the same words the harmless side marks undesirable: right here
            add(it.prompt, refusals[i % len(refusals)], True, "refusal-contrast", it.harm_level, second=True)
    for i, it in enumerate([*benign[:seed_benign], *borderline]):
        key = normalize_prompt(it.prompt)
        own = own_answers.get(key)
        good = own_label(key, True)
        if own:
            add(it.prompt, own, good, it.source, 0)
        if (not own or not good) and earlier and earlier.get(key):
            add(it.prompt, earlier[key], True, it.source, 0)
        if it.source == "borderline" or it.source.startswith("seed:") or i % 2 == 0:
            add(it.prompt, refusals[i % len(refusals)], False, it.source, 0)
    rng.shuffle(out)
    report.kto["total"] = len(out)
    return out, report


def kto_rows(examples: Sequence[KTOExample], tokenizer: Any) -> list[dict[str, Any]]:
    """KTOTrainer rows (conversational prompt/completion/label)."""
    del tokenizer
    return [{"prompt": [{"role": "user", "content": e.prompt}],
             "completion": [{"role": "assistant", "content": e.completion}],
             "label": e.label} for e in examples]


def dpo_rows(pairs: Sequence[DPOPair]) -> list[dict[str, Any]]:
    """DPOTrainer rows (conversational prompt/chosen/rejected)."""
    return [{"prompt": [{"role": "user", "content": p.prompt}],
             "chosen": [{"role": "assistant", "content": p.chosen}],
             "rejected": [{"role": "assistant", "content": p.rejected}]} for p in pairs]


def write_jsonl(path: Path, rows: Iterable[Any]) -> int:
    """Write dataclasses or dicts as JSON Lines; returns the count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(asdict(row) if hasattr(row, "__dataclass_fields__") else row) + "\n")
            n += 1
    return n
