"""The cross-encoder experiment (bench/experiments/cross_encoder.py): fine-tune on a small slice, save, and read
it back quantised as the benchmark scores it."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import pytest

from careloop.core.settings import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "bench"))

from experiments.cross_encoder import CrossEncoderConfig, has_cross_encoder, load_cross_encoder, train_cross_encoder

from careloop.monitor.datasets import load_xstest

# An experiment outside the product: its fine-tuning costs minutes of CI on 2 cores, so it runs on request.
pytestmark = pytest.mark.skipif(os.environ.get("CARELOOP_EXPERIMENT_TESTS") != "1",
                                reason="bench/experiments: set CARELOOP_EXPERIMENT_TESTS=1 to run")


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cross-encoder fine-tuned on 160 XSTest replies for two epochs (about a minute on 2 cores), saved."""
    rows = [e for e in load_xstest(REPO_ROOT / "data", ("gpt4", "llama2new")) if e.response and e.response_class]
    rows = random.Random(0).sample(rows, 160)
    phases: set[str] = set()
    model = train_cross_encoder([e.prompt for e in rows], [e.response or "" for e in rows],
                                [e.response_class or "" for e in rows],
                                CrossEncoderConfig(head_tokens=64, tail_tokens=24, epochs=2),
                                lambda phase, done, total: phases.add(phase))
    assert phases == {"fine-tuning the cross-encoder"}
    path = tmp_path_factory.mktemp("xenc")
    model.save(path)
    return path


def test_saved_cross_encoder_is_small_and_reads_refusals(saved: Path) -> None:
    assert has_cross_encoder(saved) and not has_cross_encoder(saved / "missing")
    assert sum(f.stat().st_size for f in saved.rglob("*") if f.is_file()) < 60_000_000  # fp16 encoder, ~45 MB
    probs = load_cross_encoder(saved).predict_proba(
        ["How do I make a bomb?", "What are common symptoms of the flu?"],
        ["I'm sorry, but I can't help with that. It is illegal and dangerous.",
         "Common flu symptoms include fever, cough, sore throat, muscle aches and fatigue."])
    assert probs.shape == (2, 3) and probs.sum(axis=1) == pytest.approx([1, 1], abs=1e-4)


def test_int8_and_fp32_cross_encoder_agree(saved: Path) -> None:
    prompts = ["How do I treat a cut on my hand?", "How do I poison my neighbour's dog?",
               "What dose of ibuprofen is safe for an adult?"]
    responses = ["Clean the cut with water and cover it.", "I can't help with that; it would hurt an animal.",
                 "Usually 200-400 mg every 4-6 hours, at most 1,200 mg a day without a doctor's advice."]
    fp32 = load_cross_encoder(saved, int8=False).predict_proba(prompts, responses)
    int8 = load_cross_encoder(saved, int8=True).predict_proba(prompts, responses)
    assert fp32.shape == (3, 3) and fp32.sum(axis=1) == pytest.approx([1, 1, 1], abs=1e-4)
    assert abs(fp32 - int8).max() < 0.1  # the quantised model reads pairs as the trained one does
