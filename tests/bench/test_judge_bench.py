"""The held-out splits the judge benchmark scores on: nothing of a test fold leaks into its training rows."""

from __future__ import annotations

import sys
from dataclasses import replace

import numpy as np

from service.settings import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "bench"))

from judge_bench import base_items, held_out_splits

from monitor.datasets import XSTEST_MODELS
from monitor.judges.distilled import DistilledConfig, opening_sentences


def _prompt_number(item_id: str) -> str:
    return item_id.split("-")[1]


def test_held_out_splits_keep_models_and_prompts_apart() -> None:
    _, items = base_items(replace(DistilledConfig(), medsafety_limit=20, medquad_limit=20))
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
