"""A run's material: judged traffic, the seed split into training pools and validation, the policy's own graded
replies, and the DPO pairs built from them."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from careloop.core.schema import Exchange, Verdict
from careloop.core.settings import Settings
from careloop.monitor.judges.base import Judge, JudgeInput
from careloop.monitor.scoring import safety_score
from careloop.retrain.datasets import (
    BEHAVIOUR,
    DatasetReport,
    DPOPair,
    PromptItem,
    TrafficExample,
    load_borderline_items,
    load_seed_items,
    normalize_prompt,
    split_by_hash,
    stratified_split,
    truncate_words,
)
from careloop.retrain.generate import chat, generate_many
from careloop.retrain.heldout import never_train
from careloop.retrain.quality import is_degenerate


def reply_score(harm_level: int, response_class: str, reply: str) -> float:
    """A reply's Safety Score for training: 0 when it loops, whatever the judge said of its stance.

    The judge grades a reply's stance (refuse, caution, accept), and a reply that says "please see a doctor" five
    times over has a fine stance. Scored 0 it is never a desirable KTO example, a verified DPO alternative or a
    reply remembered for later cycles, and it becomes a failure to pair against: what the model loops on is what
    it learns away from.
    """
    return 0.0 if is_degenerate(reply) else safety_score(harm_level, response_class)


def judged_traffic(engine: Engine, judge: str, target: str, limit: int) -> list[TrafficExample]:
    """The latest judged exchanges served by `target`, graded by `judge` (one per prompt, newest wins); a reply
    that loops scores 0 (see `reply_score`)."""
    with Session(engine) as s:
        cols: Any = (Exchange.request_messages, Exchange.response_text, Verdict.harm_level, Verdict.score,
                     Verdict.response_class)
        query: Any = select(*cols).join(Verdict, Verdict.exchange_id == Exchange.id)
        query = query.where(Verdict.judge == judge, Exchange.target == target, Exchange.status == 200)
        rows: list[Any] = list(s.exec(query.order_by(Verdict.id.desc()).limit(limit * 2)).all())  # type: ignore[union-attr]
    out: list[TrafficExample] = []
    seen: set[str] = set()
    for messages, response, harm, score, cls in rows:
        prompt = JudgeInput("", list(messages or []), "").prompt
        key = normalize_prompt(prompt)
        if not prompt or not response or key in seen:
            continue
        seen.add(key)
        out.append(TrafficExample(prompt, response, int(harm), 0.0 if is_degenerate(response) else float(score),
                                  str(cls)))
        if len(out) >= limit:
            break
    return out


@dataclass
class RunData:
    """The run's fixed material: validation set, training pool, exclusions."""

    validation: list[PromptItem]
    harmful_pool: list[PromptItem]
    benign_pool: list[PromptItem]
    borderline: list[PromptItem]
    excluded: set[str]


def prepare_data(settings: Settings, traffic: Sequence[TrafficExample]) -> RunData:
    """Split the seed data into validation and training pools; nothing evaluation-only is kept for training."""
    rs = settings.retrain
    excluded = set(never_train(settings.data_dir))
    pool = [it for it in load_seed_items(settings.data_dir) if normalize_prompt(it.prompt) not in excluded]
    train, validation = stratified_split(pool, rs.validation_size)
    borderline_all = [it for it in load_borderline_items() if normalize_prompt(it.prompt) not in excluded]
    borderline_train, borderline_val = split_by_hash(borderline_all, rs.validation_borderline)
    validation += borderline_val
    excluded |= {normalize_prompt(it.prompt) for it in validation}
    traffic_keys = {normalize_prompt(t.prompt) for t in traffic}
    train = [it for it in train if normalize_prompt(it.prompt) not in traffic_keys]
    rng = random.Random(rs.seed)
    harmful = [it for it in train if it.harm_level >= 1 and it.reference]
    # The graded seed set's harmless prompts are borderline-but-benign by design: they join the borderline ones.
    benign = [it for it in train if it.harm_level == 0 and not it.source.startswith("seed:")]
    seed_benign = [it for it in train if it.harm_level == 0 and it.source.startswith("seed:")]
    rng.shuffle(harmful)
    rng.shuffle(benign)
    borderline = borderline_train + seed_benign
    return RunData(validation, harmful[: rs.seed_harmful], benign[: rs.seed_benign],
                   borderline[: rs.seed_borderline], excluded)


async def policy_replies(settings: Settings, model: str, items: Sequence[PromptItem], judge: Judge,
                         max_tokens: int) -> dict[str, tuple[str, float]]:
    """The current policy's greedy replies to `items`, graded: normalized prompt → (reply, score)."""
    replies = await generate_many(settings.upstream, model, [chat(it.prompt) for it in items],
                                  max_tokens=max_tokens, api_key=settings.upstream_api_key)
    results = await judge.grade([JudgeInput(f"pol-{i}", chat(it.prompt), r.text)
                                 for i, (it, r) in enumerate(zip(items, replies, strict=True))])
    out: dict[str, tuple[str, float]] = {}
    for it, r, res in zip(items, replies, results, strict=True):
        if res is None or not r.text.strip():
            continue
        # A cut reply ends mid-sentence; keep whole sentences so the model is not taught to stop abruptly.
        cut = r.finish_reason == "length"
        text = truncate_words(r.text, max(20, len(r.text.split()) - 1)) if cut else r.text
        out[normalize_prompt(it.prompt)] = (text, reply_score(it.harm_level, res.response_class, r.text))
    return out


async def build_dpo_pairs(settings: Settings, judge: Judge, failures: Sequence[TrafficExample],
                          report: DatasetReport, references: dict[str, str] | None = None) -> list[DPOPair]:
    """For replies that scored below 1: generate the behaviour the score table wants and keep verified ones;
    where none verifies, the prompt's known good reply (`references`: normalized prompt → reply) stands in."""
    rs = settings.retrain
    references = references or {}
    failures = list(failures)[: rs.max_dpo_candidates]
    if not failures:
        return []
    convs = [[{"role": "system", "content": BEHAVIOUR[f.harm_level]}, {"role": "user", "content": f.prompt}]
             for f in failures]
    alts = await generate_many(settings.upstream, settings.base_model, convs, max_tokens=rs.max_completion_tokens,
                               api_key=settings.upstream_api_key)
    results = await judge.grade([JudgeInput(f"dpo-{i}", chat(f.prompt), a.text)
                                 for i, (f, a) in enumerate(zip(failures, alts, strict=True))])
    pairs: list[DPOPair] = []
    report.dpo_candidates += len(failures)
    for f, alt, res in zip(failures, alts, results, strict=True):
        ok = res is not None and alt.text.strip() and reply_score(f.harm_level, res.response_class, alt.text) >= 1.0
        chosen, source = (alt.text, "traffic") if ok else (references.get(normalize_prompt(f.prompt)), "reference")
        if not ok:
            report.dpo_failed_verification += 1
        if not chosen:
            continue
        chosen = truncate_words(chosen, rs.max_completion_words)
        rejected = truncate_words(f.completion, rs.max_completion_words)
        if normalize_prompt(chosen) == normalize_prompt(rejected):
            continue
        pairs.append(DPOPair(f.prompt, chosen, rejected, source, f.harm_level))
        report.dpo[f"h{f.harm_level}"] = report.dpo.get(f"h{f.harm_level}", 0) + 1
    report.dpo["total"] = len(pairs)
    return pairs


def reference_dpo_pairs(items: Sequence[PromptItem], replies: dict[str, tuple[str, float]],
                        max_words: int, earlier: dict[str, str] | None = None) -> list[DPOPair]:
    """Prompt-tied pairs from the seed pools: the known good reply (MedSafetyBench's safe reply, MedQuAD's answer,
    the seed set's graded reply; else a reply an earlier policy wrote and the judge verified, from `earlier`)
    over the policy's own reply where that reply failed (score below 1)."""
    earlier = earlier or {}
    pairs = []
    for it in items:
        key = normalize_prompt(it.prompt)
        got = replies.get(key)
        good = it.reference or earlier.get(key)
        if got and got[1] < 1.0 and good:
            chosen, rejected = truncate_words(good, max_words), truncate_words(got[0], max_words)
            if normalize_prompt(chosen) != normalize_prompt(rejected):
                pairs.append(DPOPair(it.prompt, chosen, rejected, it.source, it.harm_level))
    return pairs


def remember_verified(earlier: dict[str, str], items: Sequence[PromptItem],
                      replies: dict[str, tuple[str, float]]) -> None:
    """Keep each harmless prompt's latest reply the judge verified (score 1), for cycles whose policy fails it."""
    for it in items:
        got = replies.get(normalize_prompt(it.prompt))
        if it.harm_level == 0 and got and got[1] >= 1.0:
            earlier[normalize_prompt(it.prompt)] = got[0]


def references_of(settings: Settings, excluded: set[str]) -> dict[str, str]:
    """Known good replies of every seed prompt that may be trained on: normalized prompt → reply."""
    return {normalize_prompt(it.prompt): it.reference for it in load_seed_items(settings.data_dir)
            if it.reference and normalize_prompt(it.prompt) not in excluded}


def count_levels(items: Sequence[PromptItem]) -> dict[str, int]:
    """How many items there are of each harm level."""
    out: dict[str, int] = {}
    for it in items:
        out[str(it.harm_level)] = out.get(str(it.harm_level), 0) + 1
    return out
