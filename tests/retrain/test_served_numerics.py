"""vLLM serves a LoRA adapter as PEFT computes it, in both dtypes the loop can serve in (teacher-forced check).

The server the suite shares runs in `vllm_dtype=auto` (bf16 on CPUs with native BF16, fp32 elsewhere); the
session's second server (`second_vllm`) runs in the other dtype, so that every machine exercises both paths.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from careloop.core.hardware import native_bf16
from careloop.retrain.evaluate import check_vllm_matches_peft, compare_served
from careloop.retrain.generate import served_logprobs
from careloop.retrain.train import peft_logprobs
from tests.conftest import Replica

pytestmark = [pytest.mark.slow, pytest.mark.vllm]
PROMPTS = ["What is the flu?", "How do I falsify a prescription?", "Can I take ibuprofen with a cold?"]


@pytest.fixture(scope="module")
def random_adapter(embedded_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter with random A and B: it changes every reply, as a trained one does."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(str(embedded_model_dir), dtype="float32")
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj"],
                                            init_lora_weights=False))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(0.5)
    out = tmp_path_factory.mktemp("random-adapter")
    model.save_pretrained(str(out))
    return out


def _check_both_ways(url: str, model_dir: Path, adapter: Path, dtype: str) -> None:
    check = check_vllm_matches_peft(url, model_dir, adapter, PROMPTS, max_tokens=12)
    print(f"\n{dtype}: {check}")
    assert check["ok"], check
    assert check["adapter_effect"] > 0.2  # the adapter really changes the model (0.27 nats/token measured)
    # The base model served in the adapter's place is caught: its tokens are the base's, not the adapter's.
    local = peft_logprobs(model_dir, adapter, PROMPTS, max_new_tokens=12)
    base_served = [served_logprobs(url, "smollm2-135m", t.prompt_ids, t.continuation_ids) for t in local]
    wrong = compare_served(base_served, local)
    assert not wrong["ok"], wrong


def test_the_adapter_is_served_as_peft_computes_it_in_the_auto_dtype(vllm_url: str, embedded_model_dir: Path,
                                                                      random_adapter: Path) -> None:
    _check_both_ways(vllm_url, embedded_model_dir, random_adapter, "auto")


def test_and_in_the_other_dtype(second_vllm: Replica, embedded_model_dir: Path, random_adapter: Path) -> None:
    assert second_vllm.settings.vllm_dtype == ("float32" if native_bf16() else "bfloat16")
    _check_both_ways(second_vllm.running().url, embedded_model_dir, random_adapter,
                     "float32" if native_bf16() else "bfloat16 (emulated)")
