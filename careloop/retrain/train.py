"""KTO then DPO on a LoRA adapter with TRL + PEFT (CPU here, GPU in a cluster: same code, settings differ)."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from careloop.core.settings import RetrainSettings
from careloop.retrain.datasets import DPOPair, KTOExample, dpo_rows, kto_rows

log = logging.getLogger(__name__)


@dataclass
class StageResult:
    """What one training stage did."""

    stage: str
    examples: int
    steps: int
    seconds: float
    adapter_dir: str
    log_history: list[dict[str, Any]] = field(default_factory=list)
    cpu_seconds: float = 0.0  # CPU time of the training loop (steadier than wall time on a shared machine)


def set_torch_threads(threads: int | None) -> None:
    """Use `threads` CPU threads for torch (0/None: leave torch's default)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def _device_args(rs: RetrainSettings) -> dict[str, Any]:
    import torch

    on_gpu = torch.cuda.is_available() and not rs.force_cpu
    return {"use_cpu": not on_gpu, "bf16": bool(on_gpu and torch.cuda.is_bf16_supported()), "fp16": False}


def _load_model(base_model_dir: Path, adapter_dir: Path | None, rs: RetrainSettings) -> tuple[Any, Any, Any]:
    """(model, tokenizer, peft_config): a fresh LoRA on the base, or the previous cycle's adapter to continue."""
    from peft import LoraConfig, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

    set_seed(rs.seed)  # the LoRA's initial weights (drawn when the trainer wraps the model) follow the run's seed
    tokenizer = AutoTokenizer.from_pretrained(str(base_model_dir))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model: Any = AutoModelForCausalLM.from_pretrained(str(base_model_dir), dtype="float32")
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True)
        return model, tokenizer, None
    peft_config = LoraConfig(r=rs.lora_r, lora_alpha=rs.lora_alpha, lora_dropout=rs.lora_dropout,
                             target_modules=list(rs.lora_target_modules), task_type="CAUSAL_LM", bias="none")
    return model, tokenizer, peft_config


class _JsonlLogger:
    """A trainer callback that appends each log line (loss, rewards) to a JSONL file kept with the run."""

    def __init__(self, path: Path, stage: str) -> None:
        from transformers import TrainerCallback

        path.parent.mkdir(parents=True, exist_ok=True)
        outer = self

        class _CB(TrainerCallback):  # type: ignore[misc]
            def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
                       **kw: Any) -> None:
                if logs:
                    with path.open("a", encoding="utf-8") as fh:
                        fh.write(json.dumps({"stage": outer.stage, "step": state.global_step,
                                             "time": time.time(), **logs}) + "\n")

        self.stage = stage
        self.callback = _CB()


def _common_args(rs: RetrainSettings, out_dir: Path, lr: float, n_examples: int, max_steps: int | None,
                 progress: bool) -> dict[str, Any]:
    batch = max(2, rs.batch_size)
    steps_per_epoch = max(1, -(-n_examples // batch))
    return {
        "output_dir": str(out_dir),
        "per_device_train_batch_size": batch,
        "gradient_accumulation_steps": 1,
        "learning_rate": lr,
        "num_train_epochs": 1,
        "max_steps": max_steps if max_steps else -1,
        "lr_scheduler_type": "cosine",
        "warmup_steps": max(0, int(rs.warmup_fraction * steps_per_epoch)),
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "disable_tqdm": not progress,
        "seed": rs.seed,
        "data_seed": rs.seed,
        "gradient_checkpointing": False,
        "max_length": rs.max_length,
        "dataloader_num_workers": 0,
        "remove_unused_columns": False,
        **_device_args(rs),
    }


def train_kto(base_model_dir: Path, examples: Sequence[KTOExample], out_dir: Path, rs: RetrainSettings, *,
              init_adapter: Path | None = None, log_path: Path | None = None, max_steps: int | None = None,
              progress: bool = True) -> StageResult:
    """One epoch of KTO on a LoRA adapter (a new one, or `init_adapter` continued); saves it to `out_dir`."""
    from datasets import Dataset
    from trl import KTOConfig, KTOTrainer

    if len({e.label for e in examples}) < 2:
        raise ValueError("KTO needs both desirable and undesirable examples")
    set_torch_threads(rs.torch_threads)
    model, tokenizer, peft_config = _load_model(base_model_dir, init_adapter, rs)
    n_des = sum(e.label for e in examples)
    n_und = len(examples) - n_des
    # Balance the two sides as the KTO paper recommends: weight_d·n_d ≈ weight_u·n_u within [1, 4/3].
    des_w, und_w = 1.0, 1.0
    if n_des and n_und:
        if n_des > n_und:
            und_w = min(4 / 3, n_des / n_und)
        else:
            des_w = min(4 / 3, n_und / n_des)
    args = KTOConfig(**_common_args(rs, out_dir, rs.kto_learning_rate, len(examples), max_steps, progress),
                     beta=rs.kto_beta, loss_type=rs.kto_loss_type, desirable_weight=des_w,
                     undesirable_weight=und_w)
    callbacks: list[Any] = [_JsonlLogger(log_path, "kto").callback] if log_path else []
    trainer: Any = KTOTrainer(model=model, args=args, train_dataset=Dataset.from_list(kto_rows(examples, tokenizer)),
                         processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks)
    return _train_and_save(trainer, tokenizer, "kto", len(examples), out_dir)


def train_dpo(base_model_dir: Path, pairs: Sequence[DPOPair], out_dir: Path, rs: RetrainSettings, *,
              init_adapter: Path | None = None, log_path: Path | None = None, max_steps: int | None = None,
              progress: bool = True) -> StageResult:
    """One epoch of DPO on the LoRA adapter (continuing `init_adapter` when given); saves it to `out_dir`."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    if not pairs:
        raise ValueError("DPO needs at least one pair")
    set_torch_threads(rs.torch_threads)
    model, tokenizer, peft_config = _load_model(base_model_dir, init_adapter, rs)
    args = DPOConfig(**_common_args(rs, out_dir, rs.dpo_learning_rate, len(pairs), max_steps, progress),
                     beta=rs.dpo_beta, truncation_mode="keep_start")
    callbacks: list[Any] = [_JsonlLogger(log_path, "dpo").callback] if log_path else []
    trainer: Any = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(dpo_rows(pairs)),
                         processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks)
    return _train_and_save(trainer, tokenizer, "dpo", len(pairs), out_dir)


def _train_and_save(trainer: Any, tokenizer: Any, stage: str, n: int, out_dir: Path) -> StageResult:
    """Run one stage's epoch, save the adapter and tokenizer to `out_dir`, and say what it did."""
    t0, c0 = time.monotonic(), time.process_time()
    trainer.train()
    seconds, cpu_seconds = time.monotonic() - t0, time.process_time() - c0
    out_dir.mkdir(parents=True, exist_ok=True)
    trainer.model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    return StageResult(stage, n, int(trainer.state.global_step), seconds, str(out_dir),
                       list(trainer.state.log_history), cpu_seconds)


def peft_greedy(base_model_dir: Path, adapter_dir: Path | None, prompts: Sequence[str], max_new_tokens: int = 24,
                threads: int | None = None) -> list[str]:
    """Greedy fp32 replies from the adapter through PEFT itself, or from the base model when `adapter_dir` is None:
    what training computes, to check that vLLM serves the same model."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    set_torch_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(str(base_model_dir))
    base: Any = AutoModelForCausalLM.from_pretrained(str(base_model_dir), dtype="float32")
    model: Any = (PeftModel.from_pretrained(base, str(adapter_dir)) if adapter_dir else base).eval()
    out: list[str] = []
    for prompt in prompts:
        ids: Any = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)
        with torch.no_grad():
            gen = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.eos_token_id)
        out.append(str(tokenizer.decode(gen[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)))
    return out


@dataclass(frozen=True)
class TeacherForced:
    """A prompt, the adapter's greedy continuation, and its per-token log-probabilities with and without it."""

    prompt_ids: list[int]
    continuation_ids: list[int]
    with_adapter: list[float]
    base: list[float]


def peft_logprobs(base_model_dir: Path, adapter_dir: Path, prompts: Sequence[str], max_new_tokens: int = 16,
                  threads: int | None = None) -> list[TeacherForced]:
    """Greedy fp32 continuations through PEFT and their token log-probabilities under the adapter and the base:
    the reference a served model is compared with, token by token."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    set_torch_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(str(base_model_dir))
    base: Any = AutoModelForCausalLM.from_pretrained(str(base_model_dir), dtype="float32")
    model: Any = PeftModel.from_pretrained(base, str(adapter_dir)).eval()

    def token_logprobs(ids: Any, start: int) -> list[float]:
        logits = model(input_ids=ids).logits[0, start - 1:-1].float()
        return [float(x) for x in torch.log_softmax(logits, -1).gather(-1, ids[0, start:, None])[:, 0]]

    out: list[TeacherForced] = []
    for prompt in prompts:
        enc: Any = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)
        start = int(enc["input_ids"].shape[1])
        with torch.no_grad():
            seq = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.eos_token_id)
            with_adapter = token_logprobs(seq, start)
            with model.disable_adapter():
                plain = token_logprobs(seq, start)
        ids = [int(t) for t in seq[0]]
        out.append(TeacherForced(ids[:start], ids[start:], with_adapter, plain))
    return out


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
