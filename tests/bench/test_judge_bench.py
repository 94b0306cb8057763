"""The judge benchmark's held-out splits (nothing of a test fold leaks into its training rows), its
label-free adaptation steps, its LLM-judge concurrency sweep and its encoder-batch rate sweep."""

from __future__ import annotations

import json
import random
import sys
from dataclasses import replace

import numpy as np
import pytest

from careloop.core.settings import REPO_ROOT
from tests.monitor.fake_openai import FakeOpenAI, chat_reply

sys.path.insert(0, str(REPO_ROOT / "bench"))

from judge_bench import (
    DATA,
    base_items,
    held_out_splits,
    llm_bench,
    predict,
    prior_adjusted,
    rate_bench,
    self_trained,
)

from careloop.monitor.datasets import XSTEST_MODELS, load_xstest
from careloop.monitor.judges.base import JudgeResult
from careloop.monitor.judges.distilled_features import DistilledConfig
from careloop.monitor.judges.distilled_train import TrainingSample, opening_sentences, train_linear_head


def _prompt_number(item_id: str) -> str:
    return item_id.split("-")[1]


def test_held_out_splits_keep_models_and_prompts_apart() -> None:
    _, items = base_items(DistilledConfig(), TrainingSample(medical=20))
    openings = opening_sentences(items)
    splits = held_out_splits(items, openings, prompt_folds=5)
    groups = np.array([e.group for e in items])
    o_groups = np.array([e.group for e in openings])
    xstest = np.flatnonzero(np.isin(groups, XSTEST_MODELS))
    assert len(splits) == len(XSTEST_MODELS) + 2

    for name, folds in splits.items():
        for tr, otr, te in folds:
            assert not set(tr) & set(te)
            assert set(te) <= set(xstest)  # only XSTest rows are scored; medical rows always train
            assert not set(np.flatnonzero(~np.isin(groups, XSTEST_MODELS))) - set(tr)
            if name != "all three, held-out prompts":
                held = set(groups[te])
                assert not held & set(groups[tr]) and not held & set(o_groups[otr])
            else:
                test_prompts = {_prompt_number(items[i].id) for i in te}
                assert not test_prompts & {_prompt_number(items[i].id) for i in tr if i in set(xstest)}
                assert not test_prompts & {_prompt_number(str(openings[i].meta["opening_of"])) for i in otr
                                           if o_groups[i] in XSTEST_MODELS}
                assert set(groups[te]) == set(XSTEST_MODELS)  # each fold holds a prompt's replies from all three
    prompt_folds = splits["all three, held-out prompts"]
    scored = np.concatenate([te for _, _, te in prompt_folds])
    assert sorted(scored.tolist()) == xstest.tolist()  # every XSTest row is scored exactly once
    in_turn = splits["two -> the third, each in turn"]
    assert [sorted(set(groups[te])) for _, _, te in in_turn] == [[m] for m in XSTEST_MODELS]


def _two_blobs(seed: int = 0) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    x = np.vstack([rng.normal(-1, 1, (60, 2)), rng.normal(1, 1, (60, 2))]).astype(np.float32)
    return x, ["Accept"] * 60 + ["Refuse"] * 60


def test_prior_adjusted_follows_a_test_set_skewed_to_one_class() -> None:
    x, y = _two_blobs()
    head = train_linear_head(x, y, 1.0, False)
    rng = np.random.default_rng(1)
    # Nine in ten test rows are refusals; the borderline rows between the blobs should now lean Refuse.
    test = np.vstack([rng.normal(-1, 1, (20, 2)), rng.normal(1, 1, (180, 2)), np.zeros((10, 2))]).astype(np.float32)
    plain, adjusted = predict(head, test), prior_adjusted(head, test, np.array([0.5, 0.5]))
    assert adjusted.count("Refuse") > plain.count("Refuse")
    assert all(a == "Refuse" for a in adjusted[-10:])


def test_self_trained_adds_only_the_confident_test_rows() -> None:
    x, y = _two_blobs()
    head = train_linear_head(x, y, 1.0, False)
    test = np.array([[-3.0, -3.0], [3.0, 3.0], [0.0, 0.0]], dtype=np.float32)
    seen: list[list[str]] = []

    def fit(x_more: np.ndarray, y_more: list[str]):  # type: ignore[no-untyped-def]
        seen.append(y_more)
        return train_linear_head(np.vstack([x, x_more]), y + y_more, 1.0, False)

    calls = self_trained(head, fit, test, rounds=2, threshold=0.95)
    assert seen == [["Accept", "Refuse"], ["Accept", "Refuse"]]  # the row between the blobs never joins
    assert calls[:2] == ["Accept", "Refuse"]


async def test_llm_bench_measures_each_concurrency_on_the_same_sample_after_an_untimed_warm_up() -> None:
    refuse = json.dumps({"harm_level": 2, "response_class": "Refuse", "rationale": "declines"})
    server = FakeOpenAI(reply=lambda body: (200, chat_reply(refuse)), delay_s=0.01)
    url = await server.start()
    try:
        out: dict[str, object] = {}
        rows = await llm_bench(url, "judge-model", [1, 3], limit=12, out=out, warmup=2)
    finally:
        await server.stop()
    assert out["llm"] == rows and [r["concurrency"] for r in rows] == [1, 3]
    assert len(server.requests) == 2 * (12 + 2)  # each row: its warm-up, then the whole sample
    assert server.peak <= 3 and {r["model"] for r in server.requests} == {"judge-model"}
    sample = random.Random(0).sample(load_xstest(DATA), 12)
    refused = sum(e.response_class == "Refuse" for e in sample) / 12
    for row in rows:
        assert row["n"] == 12 and row["failed"] == 0 and row["verdicts_per_s"] > 0
        assert row["accuracy"] == pytest.approx(refused)  # every verdict was Refuse, scored against the labels


class _CountingJudge:
    """Stands in for the distilled judge: records each grade's size and the encoder batch it ran at."""

    def __init__(self) -> None:
        self.loaded = type("Loaded", (), {})()
        self.loaded.featurizer = type("Featurizer", (), {"batch_size": 32})()
        self.calls: list[tuple[int, int]] = []

    def grade_sync(self, items: list) -> list[JudgeResult]:  # type: ignore[type-arg]
        b = self.loaded.featurizer.batch_size
        self.calls.append((len(items), b))
        # At encoder batch 16 the stand-in calls every fifth reply Refuse, so verdicts differ from the baseline.
        return [JudgeResult(harm_level=0, response_class="Refuse" if b == 16 and int(i.exchange_id) % 5 == 0
                            else "Accept", latency_ms=0.0) for i in items]


def test_rate_bench_times_each_encoder_batch_interleaved_and_compares_verdicts() -> None:
    items = [replace(e, id=str(n)) for n, e in enumerate(load_xstest(DATA)[:50])]
    judge = _CountingJudge()
    out: dict[str, object] = {}
    rows = rate_bench(judge, [64, 16], worker_batch=20, reps=3, out=out, items=items)
    assert out["rate"] == rows and [r["encoder_batch"] for r in rows] == [64, 16]
    assert judge.calls[0] == (20, 32)  # the untimed warm-up: one worker batch
    timed = judge.calls[1:]
    per_pass = [(20, 64), (20, 64), (10, 64), (20, 16), (20, 16), (10, 16)]  # 50 replies in worker batches of 20
    assert timed == per_pass * 3  # the options take turns, run after run
    assert rows[0]["ratio"] == 1.0 and len(rows[1]["runs"]) == 3 and rows[1]["n"] == 50
    assert rows[0]["same_verdicts"] == 50 and rows[1]["same_verdicts"] == 40
