"""bench/kto_speed.py: the set it times is the default seed mix, both labels, no vLLM needed."""

from __future__ import annotations

import sys
from pathlib import Path

from careloop.core.settings import Settings

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from kto_speed import CONFIGS, kto_examples


def test_timed_set_is_the_default_mix_with_both_labels() -> None:
    examples = kto_examples(Settings())
    assert len(examples) > 150
    assert {e.label for e in examples} == {True, False}


def test_the_ratio_is_against_the_kl_pass_and_the_default_is_timed() -> None:
    assert CONFIGS[0][1]["kto_loss_type"] == "kto"
    default = Settings().retrain
    assert any(c == {"kto_loss_type": default.kto_loss_type, "max_length": default.max_length} for _, c in CONFIGS)
