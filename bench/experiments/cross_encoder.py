"""An experimental response head for the distilled judge: MiniLM fine-tuned to read prompt and response together.

Measured below the shipped logistic head on held-out source models (careloop/monitor/judges/README.md), so
careloop does not run it; `bench/judge_bench.py --cross-encoder` does.

The input is `[CLS] prompt [SEP] response opening … response ending [SEP]` (the prompt as segment 0, the
response as segment 1); the mean-pooled last layer and the standardised hand cues of the response feed a
linear layer over Accept / Caution / Refuse. Fine-tuned end to end with AdamW, linear warm-up and decay.
On disk: the encoder in fp16 safetensors (about 45 MB) plus a JSON file for the linear layer and cue scaling.
Torch and transformers are imported inside functions so importing this module stays cheap.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from careloop.monitor.judges.distilled_features import base_encoder_dir, hand_features, quiet_transformers
from careloop.monitor.scoring import RESPONSE_CLASSES

ENCODER_DIR = "response_encoder"
HEAD_FILE = "response_xenc.json"
Progress = Callable[[str, int, int], None]  # (phase, done, total)


@dataclass
class CrossEncoderConfig:
    """Knobs of the cross-encoder (defaults chosen by bench/judge_bench.py --cross-encoder)."""

    prompt_tokens: int = 40
    head_tokens: int = 88  # the response's opening: where refusals are
    tail_tokens: int = 32  # the response's ending: where disclaimers and redirects are
    epochs: float = 3.0
    lr: float = 5e-5  # the encoder's; the linear layer learns at 1e-3
    batch_size: int = 16
    seed: int = 0
    int8_inference: bool = True  # dynamic int8 linear layers: measured 1.5x faster at the same κ (±0.01)


def encode_pairs(tokenizer: Any, prompts: Sequence[str], responses: Sequence[str],
                 cfg: CrossEncoderConfig) -> list[tuple[list[int], list[int]]]:
    """(input ids, token type ids) of each pair; a long response keeps its opening and its ending."""
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    p_ids = tokenizer([p or " " for p in prompts], add_special_tokens=False)["input_ids"]
    r_ids = tokenizer([r or " " for r in responses], add_special_tokens=False)["input_ids"]
    out: list[tuple[list[int], list[int]]] = []
    for p, r in zip(p_ids, r_ids, strict=True):
        p = p[: cfg.prompt_tokens]
        if len(r) > cfg.head_tokens + cfg.tail_tokens:
            r = [*r[: cfg.head_tokens], sep_id, *r[-cfg.tail_tokens:]]
        ids = [cls_id, *p, sep_id, *r, sep_id]
        out.append((ids, [0] * (len(p) + 2) + [1] * (len(r) + 1)))
    return out


def _batch(pairs: Sequence[tuple[list[int], list[int]]], pad_id: int) -> tuple[Any, Any, Any]:
    import torch

    n = max(len(ids) for ids, _ in pairs)
    ids_t = torch.full((len(pairs), n), pad_id, dtype=torch.long)
    types_t = torch.zeros((len(pairs), n), dtype=torch.long)
    mask_t = torch.zeros((len(pairs), n), dtype=torch.long)
    for row, (ids, types) in enumerate(pairs):
        ids_t[row, : len(ids)] = torch.tensor(ids)
        types_t[row, : len(types)] = torch.tensor(types)
        mask_t[row, : len(ids)] = 1
    return ids_t, types_t, mask_t


@dataclass
class CrossEncoder:
    """A fine-tuned encoder, its linear layer and the cue scaling: scores (prompt, response) pairs."""

    encoder: Any
    tokenizer: Any
    linear: Any  # torch.nn.Linear over [pooled encoder output, standardised cues]
    cue_mean: np.ndarray
    cue_scale: np.ndarray
    cfg: CrossEncoderConfig
    classes: tuple[str, ...] = RESPONSE_CLASSES

    def _logits(self, pairs: Sequence[tuple[list[int], list[int]]], cues: np.ndarray, dropout: float = 0.0) -> Any:
        import torch

        ids, types, mask = _batch(pairs, int(self.tokenizer.pad_token_id))
        hidden = self.encoder(input_ids=ids, token_type_ids=types, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1)
        x = torch.cat([pooled.float(), torch.from_numpy((cues - self.cue_mean) / self.cue_scale)], dim=1)
        if dropout:
            x = torch.nn.functional.dropout(x, dropout, training=True)
        return self.linear(x)

    def predict_proba(self, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Probabilities over `classes` for each pair."""
        import torch

        pairs = encode_pairs(self.tokenizer, prompts, responses, self.cfg)
        cues = np.asarray([hand_features(r) for r in responses], dtype=np.float32).reshape(len(pairs), -1)
        out = np.zeros((len(pairs), len(self.classes)), dtype=np.float32)
        order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]))  # little padding per batch
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                logits = self._logits([pairs[i] for i in idx], cues[idx])
                out[idx] = logits.softmax(-1).numpy()
        return out

    def save(self, path: Path) -> None:
        """Write the encoder (fp16) and the head into an artefact directory."""
        import copy

        import torch

        copy.deepcopy(self.encoder).to(torch.float16).save_pretrained(path / ENCODER_DIR, safe_serialization=True)
        self.tokenizer.save_pretrained(path / ENCODER_DIR)
        head = {"weight": self.linear.weight.detach().tolist(), "bias": self.linear.bias.detach().tolist(),
                "cue_mean": self.cue_mean.tolist(), "cue_scale": self.cue_scale.tolist(),
                "classes": list(self.classes), "config": self.cfg.__dict__}
        (path / HEAD_FILE).write_text(json.dumps(head))


def has_cross_encoder(path: Path) -> bool:
    """Whether an artefact directory holds a cross-encoder response head."""
    return (path / HEAD_FILE).is_file() and (path / ENCODER_DIR).is_dir()


def load_cross_encoder(path: Path, int8: bool | None = None) -> CrossEncoder:
    """Read back `CrossEncoder.save` (fp32 weights; dynamic int8 linear layers unless told otherwise)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    head = json.loads((path / HEAD_FILE).read_text())
    known = CrossEncoderConfig.__dataclass_fields__
    cfg = CrossEncoderConfig(**{k: v for k, v in head.get("config", {}).items() if k in known})
    encoder = AutoModel.from_pretrained(str(path / ENCODER_DIR), add_pooling_layer=False,
                                        dtype=torch.float32).eval()
    if cfg.int8_inference if int8 is None else int8:
        encoder = _quantize(encoder)
    weight = torch.tensor(head["weight"], dtype=torch.float32)
    linear = torch.nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        linear.weight.copy_(weight)
        linear.bias.copy_(torch.tensor(head["bias"], dtype=torch.float32))
    return CrossEncoder(encoder, AutoTokenizer.from_pretrained(str(path / ENCODER_DIR)), linear.eval(),
                        np.asarray(head["cue_mean"], dtype=np.float32), np.asarray(head["cue_scale"], dtype=np.float32),
                        cfg, tuple(head["classes"]))


def _quantize(encoder: Any) -> Any:
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notice; the API is what CPU inference has
        return torch.ao.quantization.quantize_dynamic(encoder, {torch.nn.Linear}, dtype=torch.qint8)


def train_cross_encoder(prompts: Sequence[str], responses: Sequence[str], labels: Sequence[str],
                        cfg: CrossEncoderConfig | None = None, progress: Progress | None = None) -> CrossEncoder:
    """Fine-tune MiniLM (from the offline package) with a linear head on labelled (prompt, response) pairs."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    cfg = cfg or CrossEncoderConfig()
    quiet_transformers()
    torch.manual_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(str(base_encoder_dir()))
    encoder = AutoModel.from_pretrained(str(base_encoder_dir()), add_pooling_layer=False, dtype=torch.float32)
    pairs = encode_pairs(tokenizer, prompts, responses, cfg)
    cues = np.asarray([hand_features(r) for r in responses], dtype=np.float32).reshape(len(pairs), -1)
    y = torch.tensor([RESPONSE_CLASSES.index(c) for c in labels])
    linear = torch.nn.Linear(int(encoder.config.hidden_size) + cues.shape[1], len(RESPONSE_CLASSES))
    model = CrossEncoder(encoder, tokenizer, linear, cues.mean(0), cues.std(0) + 1e-6, cfg)
    opt = torch.optim.AdamW([{"params": encoder.parameters(), "lr": cfg.lr},
                             {"params": linear.parameters(), "lr": 1e-3}], weight_decay=0.01)
    steps = max(1, int(math.ceil(len(pairs) / cfg.batch_size) * cfg.epochs))
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * max(0.0, (steps - s) / max(1, steps - warm)))
    rng = np.random.default_rng(cfg.seed)
    params = [*encoder.parameters(), *linear.parameters()]
    encoder.train()
    step = 0
    while step < steps:
        for batch in _length_bucketed_batches(pairs, cfg.batch_size, rng):
            if step >= steps:
                break
            loss = torch.nn.functional.cross_entropy(
                model._logits([pairs[i] for i in batch], cues[batch], dropout=0.1), y[batch])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
            step += 1
            if progress:
                progress("fine-tuning the cross-encoder", step, steps)
    encoder.eval()
    linear.eval()
    return model  # fp32; `load_cross_encoder` gives the int8 form the judge runs


def _length_bucketed_batches(pairs: Sequence[tuple[list[int], list[int]]], batch_size: int,
                             rng: np.random.Generator) -> list[list[int]]:
    """One epoch of shuffled batches of similar length (pools of eight batches sorted by length)."""
    order = rng.permutation(len(pairs)).tolist()
    pool = batch_size * 8
    batches: list[list[int]] = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start:start + pool], key=lambda i: len(pairs[i][0]))
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)  # type: ignore[arg-type]
    return batches
