"""Would the served model itself make a better distilled judge? A probe on frozen SmolLM2-135M-Instruct.

    .venv/bin/python bench/smollm2_probe.py [--layers 20]      # needs `careloop model prepare` first

The served base model reads the prompt (user turn, first 64 tokens) and the reply's first 80 tokens (assistant
turn) through its chat template; the reply's tokens are mean-pooled after every second decoder layer, the 10 hand
cues are appended and a logistic head is fitted exactly as the shipped judge's (C, opening-sentence rows at the
shipped weight), leave-one-source-model-out on XSTest. Printed beside it: the shipped v3 features, v3 + SmolLM2
concatenated, and the feature passes' verdicts/s on about 300 XSTest rows for both.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from judge_bench import base_items, embed_by_layer, lomo_kappa

from careloop.core.hardware import native_bf16
from careloop.core.settings import Settings
from careloop.monitor.datasets import XSTEST_MODELS, LabelledExample
from careloop.monitor.judges.distilled_features import (
    DistilledConfig,
    embed_texts,
    hand_features,
    load_prompt_encoder,
    truncated_encoder,
)
from careloop.monitor.judges.distilled_train import opening_sentences

PROMPT_TOKENS = 64


def chat_sequences(tok: Any, items: Sequence[LabelledExample], reply_tokens: int) -> list[tuple[list[int], int]]:
    """Token ids of (prompt as the user turn + reply opening), and where the reply starts."""
    seqs = []
    for e in items:
        reply = tok(e.response or "", add_special_tokens=False)["input_ids"][:reply_tokens]
        prompt = tok.decode(tok(e.prompt, add_special_tokens=False)["input_ids"][:PROMPT_TOKENS])
        head = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=True,
                                       add_generation_prompt=True)
        head = list(head if isinstance(head, list) else head["input_ids"])  # a list or a BatchEncoding
        seqs.append((head + list(reply), len(head)))
    return seqs


def reply_states(model: Any, tok: Any, items: Sequence[LabelledExample], reply_tokens: int,
                 batch_size: int = 32) -> np.ndarray:
    """The reply's tokens mean-pooled after every decoder layer: shape (layers + 1, len(items), hidden)."""
    import torch

    seqs = chat_sequences(tok, items, reply_tokens)
    order = np.argsort([len(s) for s, _ in seqs])
    out = np.zeros((len(model.model.layers) + 1, len(items), model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for b in range(0, len(order), batch_size):
            idx = order[b:b + batch_size]
            width = max(len(seqs[i][0]) for i in idx)
            ids = torch.full((len(idx), width), tok.pad_token_id or 0)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            reply = torch.zeros((len(idx), width, 1))
            for j, i in enumerate(idx):
                s, start = seqs[i]
                ids[j, :len(s)] = torch.tensor(s)
                mask[j, :len(s)] = 1
                reply[j, start:len(s)] = 1
            hidden = model.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
            for k, h in enumerate(hidden):
                out[k, idx] = ((h.float() * reply).sum(1) / reply.sum(1).clamp(min=1)).numpy()
    return out


def load_served_model(settings: Settings, layers: int, bf16: bool) -> tuple[Any, Any]:
    """The served base model, cut after its first `layers` decoder layers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = settings.base_model_dir
    if not (path / "config.json").exists():
        raise SystemExit(f"no model at {path}: run `careloop model prepare` first")
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.bfloat16 if bf16 else torch.float32).eval()
    model.model.layers = model.model.layers[:layers]
    return model, AutoTokenizer.from_pretrained(str(path))


def probe(layers: int, out: dict[str, object]) -> None:
    """κ per SmolLM2 layer, v3 and v3 + SmolLM2, and the verdicts/s of the feature passes."""
    import torch

    cfg = DistilledConfig()
    bf16 = native_bf16()
    _, items = base_items(cfg)
    openings = opening_sentences(items)
    labels = [e.response_class or "" for e in items]
    groups = np.array([e.group for e in items])
    o_rows = ([e.response_class or "" for e in openings], np.array([e.group for e in openings]))
    cues = np.asarray([hand_features(e.response or "") for e in items], dtype=np.float32)
    o_cues = np.asarray([hand_features(e.response or "") for e in openings], dtype=np.float32)
    model, tok = load_served_model(Settings(), layers, bf16)
    encoder, mini_tok = load_prompt_encoder()
    print(f"SmolLM2 states ({layers} layers, bf16={bf16}) for {len(items)} items + {len(openings)} openings ...",
          flush=True)
    smol, o_smol = reply_states(model, tok, items, cfg.head_tokens), reply_states(model, tok, openings,
                                                                                 cfg.head_tokens)
    depth = cfg.response_layers
    mini = embed_by_layer(encoder, mini_tok, [e.response or "" for e in items], cfg.head_tokens)[depth]
    o_mini = embed_by_layer(encoder, mini_tok, [e.response or "" for e in openings], cfg.head_tokens)[depth]

    def row(name: str, x: np.ndarray, xo: np.ndarray) -> dict[str, Any]:
        folds = lomo_kappa(np.hstack([x, cues]), labels, groups, cfg,
                           (np.hstack([xo, o_cues]), *o_rows), cfg.opening_weight)
        mean = float(np.mean(list(folds.values())))
        print(f"{name:28s} " + " ".join(f"{folds[m]:16.3f}" for m in XSTEST_MODELS) + f" {mean:6.3f}", flush=True)
        return {"option": name, "folds": folds, "mean": mean}

    print(f"\n{'features (+ 10 cues)':28s} " + " ".join(f"{m:>16s}" for m in XSTEST_MODELS) + f" {'mean':>6s}")
    v3 = row(f"v3: MiniLM layer {depth}", mini, o_mini)
    by_layer = {k: row(f"SmolLM2 layer {k}", smol[k], o_smol[k]) for k in range(0, layers + 1, 2)}
    best = max(by_layer, key=lambda k: by_layer[k]["mean"])
    both = row(f"v3 + SmolLM2 layer {best}", np.hstack([mini, smol[best]]), np.hstack([o_mini, o_smol[best]]))
    rows = [v3, *by_layer.values(), both]
    xs = [e for e in items if e.group in XSTEST_MODELS]
    sample = xs[:: max(1, len(xs) // 300)]
    reply_states(model, tok, sample[:32], cfg.head_tokens)  # warm-up, then the timed pass
    t0 = time.perf_counter()
    reply_states(model, tok, sample, cfg.head_tokens)
    smol_rate = len(sample) / (time.perf_counter() - t0)
    if bf16:
        encoder = encoder.to(torch.bfloat16)
    short = truncated_encoder(encoder, depth)
    embed_texts(encoder, mini_tok, [e.prompt for e in sample[:32]], cfg.prompt_tokens)  # warm-up, as above
    t0 = time.perf_counter()
    embed_texts(encoder, mini_tok, [e.prompt for e in sample], cfg.prompt_tokens, batch_size=32)
    embed_texts(short, mini_tok, [e.response or "" for e in sample], cfg.head_tokens, batch_size=32)
    mini_rate = len(sample) / (time.perf_counter() - t0)
    print(f"\nfeature passes, {len(sample)} XSTest rows, batch 32, bf16={bf16}: SmolLM2 ({layers} layers) "
          f"{smol_rate:.1f} verdicts/s; v3 MiniLM (prompt + reply) {mini_rate:.1f} verdicts/s")
    out.update(rows=rows, bf16=bf16, layers=layers,
               verdicts_per_s={"smollm2": smol_rate, "v3_minilm": mini_rate})


def main() -> None:
    """Run the probe and write a JSON summary."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=20, help="decoder layers to run (of 30)")
    ap.add_argument("--out", type=Path, default=Path("smollm2_probe.json"))
    args = ap.parse_args()
    import torch

    torch.set_num_threads(2)
    out: dict[str, object] = {}
    probe(args.layers, out)
    args.out.write_text(json.dumps(out, indent=2, default=float))
    print(f"\nsummary: {args.out}")


if __name__ == "__main__":
    main()
