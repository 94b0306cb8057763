"""Dataset building: dedupe, stratified validation split, exclusions, KTO labels."""

from __future__ import annotations

from pathlib import Path

from careloop.core.settings import Settings
from careloop.retrain.datasets import (
    PromptItem,
    TrafficExample,
    build_kto_set,
    dedupe,
    load_borderline_items,
    normalize_prompt,
    stratified_split,
    truncate_words,
)
from careloop.retrain.heldout import never_train
from careloop.retrain.run_data import prepare_data


def _items(n: int, level: int, source: str = "s") -> list[PromptItem]:
    return [PromptItem(f"prompt {level}-{i}?", level, source, f"ref {i}") for i in range(n)]


def test_dedupe_ignores_case_space_and_trailing_punctuation() -> None:
    items = [PromptItem("What is  Flu?", 0, "a"), PromptItem("what is flu", 0, "b"), PromptItem("", 0, "c"),
             PromptItem("What is a cold?", 0, "d")]
    out, dropped = dedupe(items)
    assert [i.source for i in out] == ["a", "d"]
    assert dropped == 2


def test_split_is_stratified_disjoint_deterministic_and_whole_prompts() -> None:
    items = [*_items(80, 0), *_items(30, 3), *_items(10, 1)]
    items += [PromptItem("PROMPT 0-1", 0, "s")]  # same prompt as one above, other spelling
    train, val = stratified_split(items, 24)
    assert {normalize_prompt(i.prompt) for i in train}.isdisjoint({normalize_prompt(i.prompt) for i in val})
    levels = {i.harm_level: 0 for i in val}
    for i in val:
        levels[i.harm_level] += 1
    assert set(levels) == {0, 1, 3}
    assert levels[0] == levels[3] == levels[1] == 8
    assert len(val) == 24
    assert {i.prompt for i in stratified_split(list(reversed(items)), 24)[1]} == {i.prompt for i in val}


def test_split_keeps_phrasings_of_one_base_prompt_together() -> None:
    items = [PromptItem(f"{style} base {b}", 3, "seed", group=f"base {b}")
             for b in range(20) for style in ("direct", "indirect", "roleplay")]
    train, val = stratified_split(items, 12)
    assert val
    assert {i.group for i in train}.isdisjoint({i.group for i in val})


def test_kto_set_excludes_evaluation_prompts_and_labels_by_score() -> None:
    harmful = _items(4, 3, "medsafetybench")
    benign = _items(4, 0, "medquad")
    own = {normalize_prompt(i.prompt): f"own answer to {i.prompt}" for i in [*harmful, *benign]}
    scores = {k: 0.0 for k in own}
    scores[normalize_prompt(harmful[0].prompt)] = 1.0  # the policy already refused this one
    scores[normalize_prompt(benign[1].prompt)] = 0.0  # and refused this benign one (undesirable)
    for b in benign:
        if b is not benign[1]:
            scores[normalize_prompt(b.prompt)] = 1.0
    traffic = [TrafficExample("How can I kill a Python process?", "No.", 0, 0.0, "Refuse"),
               TrafficExample("live question", "good answer", 0, 1.0, "Accept")]
    excluded = {normalize_prompt("How can I kill a Python process?"), normalize_prompt(harmful[3].prompt)}
    examples, report = build_kto_set(traffic, [*harmful, *benign], own, excluded=excluded, seed_harmful=4,
                                     seed_benign=4, borderline=[PromptItem("How do I kill weeds?", 0, "borderline")],
                                     policy_scores=scores)
    prompts = {normalize_prompt(e.prompt) for e in examples}
    assert prompts.isdisjoint(excluded)
    assert report.excluded >= 2
    by = {(e.prompt, e.completion): e.label for e in examples}
    assert by[("live question", "good answer")] is True
    assert by[(harmful[1].prompt, "ref 1")] is True  # the safe reference reply is desirable
    assert by[(harmful[1].prompt, own[normalize_prompt(harmful[1].prompt)])] is False
    assert by[(harmful[0].prompt, own[normalize_prompt(harmful[0].prompt)])] is True  # its own refusal: desirable
    assert by[(benign[1].prompt, own[normalize_prompt(benign[1].prompt)])] is False
    assert by[(benign[2].prompt, own[normalize_prompt(benign[2].prompt)])] is True
    refusals = [e for e in examples if e.prompt == "How do I kill weeds?"]
    assert refusals and all(not e.label for e in refusals)
    assert report.kto["total"] == len(examples)


def test_the_refusals_marked_wrong_on_harmless_prompts_are_marked_right_on_harmful_ones() -> None:
    harmful = _items(6, 3, "medsafetybench")
    borderline = [PromptItem(f"How do I kill weeds number {i}?", 0, "borderline") for i in range(6)]
    examples, report = build_kto_set([], harmful, {}, excluded=set(), seed_harmful=6, seed_benign=0,
                                     borderline=borderline)
    refusal_words = {e.completion for e in examples if e.source == "borderline" and not e.label}
    on_harmful = [e for e in examples if e.completion in refusal_words and e.harm_level == 3]
    assert refusal_words and {e.completion for e in on_harmful} == refusal_words  # every one of them
    assert all(e.label for e in on_harmful) and len(on_harmful) == 6
    assert report.kto["refusal-contrast:desirable"] == 6
    assert {e.completion for e in examples if e.prompt == harmful[0].prompt} >= {"ref 0"}  # the reference stays
    plain, _ = build_kto_set([], harmful, {}, excluded=set(), seed_harmful=6, seed_benign=0, borderline=borderline,
                             refusal_contrast=False)
    assert not [e for e in plain if e.completion in refusal_words and e.label]


def test_truncate_words_keeps_whole_sentences() -> None:
    text = "One two three. Four five six seven. Eight nine ten eleven twelve"
    assert truncate_words(text, 9) == "One two three. Four five six seven."
    assert truncate_words("short", 9) == "short"


def test_prepare_data_never_trains_on_heldout_or_validation(settings: Settings) -> None:
    data = prepare_data(settings, [])
    forbidden = set(never_train(settings.data_dir)) | {normalize_prompt(i.prompt) for i in data.validation}
    train = {normalize_prompt(i.prompt) for i in [*data.harmful_pool, *data.benign_pool, *data.borderline]}
    assert train and train.isdisjoint(forbidden)
    assert {0, 3} <= {i.harm_level for i in data.validation}
    size = settings.retrain.validation_size
    seed_val = [i for i in data.validation if i.source != "borderline"]
    assert size <= len(seed_val) <= size * 1.5  # whole phrasing groups may add a few


def test_validation_holds_a_fixed_share_of_the_borderline_set(settings: Settings) -> None:
    data = prepare_data(settings, [])
    held = [i for i in data.validation if i.source == "borderline"]
    assert len(held) == settings.retrain.validation_borderline
    trained = {normalize_prompt(i.prompt) for i in data.borderline}
    assert trained.isdisjoint(normalize_prompt(i.prompt) for i in held)
    assert {normalize_prompt(i.prompt) for i in held} == {
        normalize_prompt(i.prompt) for i in prepare_data(settings, []).validation if i.source == "borderline"}


def test_an_earlier_verified_answer_is_desirable_where_the_policy_now_refuses() -> None:
    item = PromptItem("How do I kill weeds?", 0, "borderline")
    key = normalize_prompt(item.prompt)
    examples, _ = build_kto_set([], [], {key: "I can't help with that."}, excluded=set(), seed_harmful=0,
                                seed_benign=0, borderline=[item], policy_scores={key: 0.0},
                                earlier={key: "Pull them by the root or pour boiling water on them."})
    by = {e.completion: e.label for e in examples}
    assert by["Pull them by the root or pour boiling water on them."] is True
    assert by["I can't help with that."] is False
    examples, _ = build_kto_set([], [], {key: "Pull them."}, excluded=set(), seed_harmful=0, seed_benign=0,
                                borderline=[item], policy_scores={key: 1.0}, earlier={key: "Older answer."})
    assert "Older answer." not in {e.completion for e in examples}  # the policy answers: its own reply serves


def test_borderline_prompts_are_not_xstest() -> None:
    xs = set(never_train(Path(__file__).resolve().parents[2] / "data"))
    items = load_borderline_items()
    assert len(items) >= 50
    assert not {normalize_prompt(i.prompt) for i in items} & xs
