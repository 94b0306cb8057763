"""The recalibration bench's core on a tiny slice: its output's shape, and no held-out prompt in any training set."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from careloop.core.settings import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "bench"))

from recalibration_bench import (
    DATA,
    FeatureCache,
    by_prompt,
    draw,
    heldout_split,
    prompt_of,
    run_bench,
    table,
    variants,
)

from careloop.monitor.datasets import XSTEST_MODELS, load_smollm2
from careloop.monitor.judges.distilled_features import DistilledConfig, hand_features
from careloop.monitor.judges.distilled_train import TrainingSample

TINY = DistilledConfig()
TINY_SAMPLE = TrainingSample(xstest=30, medical=15, heldout=40)


def cues_only(prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
    """The hand cues alone: the bench's arithmetic without loading the encoder."""
    return np.asarray([hand_features(r) for r in responses], dtype=np.float32)


def test_split_and_draws_keep_prompts_whole() -> None:
    labelled = load_smollm2(DATA)
    pool, held = heldout_split(labelled, 0.35)
    assert len(pool) + len(held) == len(labelled)
    assert not {prompt_of(e) for e in pool} & {prompt_of(e) for e in held}
    assert 0.3 < len(by_prompt(held)) / len(by_prompt(labelled)) < 0.4
    assert sum(e.response_class != "Accept" for e in held) >= 15  # stratified: the rare labels are held out too
    a, b = draw(pool, 100, 0), draw(pool, 100, 1)
    assert 100 <= len(a) <= 102 and {e.id for e in a} != {e.id for e in b}
    assert all(len(by_prompt(a)[prompt_of(e)]) == len(by_prompt(pool)[prompt_of(e)]) for e in a)
    assert draw(pool, None, 0) == pool and draw(pool, 10_000, 0) == pool


def test_core_on_a_tiny_slice(tmp_path: Path) -> None:
    labelled = load_smollm2(DATA)[:48]
    chosen = [variants(TINY, TINY_SAMPLE)["console"]]
    features = FeatureCache(cues_only)
    before, after, held = run_bench(features, labelled, chosen, sizes=(10, None), seeds=2,
                                    log=lambda line: None)
    assert before.n_train == 0 and not before.train_ids
    assert [(m.variant, m.n_asked, m.seed) for m in after] == [
        ("console", 10, 0), ("console", 10, 1), ("console", None, 0)]
    held_prompts = {prompt_of(e) for e in held}
    prompts = {e.id: prompt_of(e) for e in labelled}
    for m in [before, *after]:
        assert set(m.xstest_lomo) == set(XSTEST_MODELS)
        assert all(-1.0 <= k <= 1.0 for k in [m.in_domain, m.xstest_seen, *m.xstest_lomo.values()])
        trained = {prompts[i.split(":")[0]] for i in m.train_ids}
        assert len(trained) == len(by_prompt([e for e in labelled if prompt_of(e) in trained]))
        assert not trained & held_prompts
    assert all(m.n_train >= 10 for m in after if m.n_asked == 10)
    lines = table(before, after)
    assert len(lines) == 3 + 2 and lines[2].startswith("| before")
    assert len(before.confusion) == 3 and sum(map(sum, before.confusion)) == len(held)
    features.save(tmp_path / "f.npz")
    again = FeatureCache(cues_only)
    again.load(tmp_path / "f.npz")
    assert again.rows.keys() == features.rows.keys()
