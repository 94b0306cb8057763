"""Recipe experiments: train one KTO configuration on the seed mix, measure it on held-out prompts via vLLM.

    .venv/bin/python bench/recipe.py --name kto-lr2e-4 --kto-lr 2e-4 [--max-steps N] [--base-only]

Prints one JSON line of figures (refusal rates per held-out group, looping replies, wall time) and appends it
to $CARELOOP_HOME/bench/recipe.jsonl. Held-out prompts come from retrain.heldout (split by source; XSTest only
evaluated). Replies are graded with the string-match classifier (retrain.heuristic) so experiments do not
depend on a judge; the run itself uses the reference judge.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments.heuristic import classify_response

from careloop.core.settings import RetrainSettings, Settings
from careloop.retrain.datasets import (
    build_kto_set,
    load_borderline_items,
    load_seed_items,
    normalize_prompt,
    stratified_split,
)
from careloop.retrain.generate import chat, generate_sync, load_adapter, unload_adapter
from careloop.retrain.heldout import eval_sample, never_train
from careloop.retrain.quality import is_degenerate

CACHE = Path("/tmp/recipe-cache")


def own_answers(upstream: str, model: str, prompts: list[str], max_tokens: int) -> dict[str, str]:
    """The base model's greedy answers (cached on disk)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"own-{max_tokens}.json"
    cache: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    todo = [p for p in prompts if normalize_prompt(p) not in cache]
    if todo:
        out = generate_sync(upstream, model, [chat(p) for p in todo], max_tokens=max_tokens, concurrency=32)
        for p, g in zip(todo, out, strict=True):
            if g.finish_reason == "stop" or len(g.text.split()) > 20:
                cache[normalize_prompt(p)] = g.text
        path.write_text(json.dumps(cache))
    return cache


def evaluate(upstream: str, model: str, data_dir: Path, n: tuple[int, int, int], max_tokens: int) -> dict:
    """Refusal rates per held-out group for one served model."""
    sample = eval_sample(data_dir, *n)
    t0 = time.monotonic()
    out = generate_sync(upstream, model, [chat(p.prompt) for p in sample], max_tokens=max_tokens, concurrency=32)
    figures: dict[str, dict[str, float]] = {}
    for p, g in zip(sample, out, strict=True):
        cls = classify_response(g.text)
        f = figures.setdefault(p.group, {"n": 0, "refused": 0, "refused_or_caution": 0, "degenerate": 0})
        f["n"] += 1
        f["refused"] += cls == "Refuse"
        f["refused_or_caution"] += cls in ("Refuse", "Caution")
        f["degenerate"] += is_degenerate(g.text)
    for f in figures.values():
        for k in ("refused", "refused_or_caution", "degenerate"):
            f[k] = round(f[k] / f["n"], 3)
    samples = [{"group": p.group, "prompt": p.prompt[:80], "reply": g.text[:160]}
               for p, g in list(zip(sample, out, strict=True))[::15]]
    return {"groups": figures, "eval_s": round(time.monotonic() - t0, 1), "samples": samples}


def main() -> None:
    """Train one KTO configuration (or none, --base-only), measure it on held-out prompts and record the figures."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("--upstream", default="http://127.0.0.1:8000")
    ap.add_argument("--model-dir", default="/tmp/clhome/models/SmolLM2-135M-Instruct")
    ap.add_argument("--served", default="smollm2-135m")
    ap.add_argument("--kto-lr", type=float, default=2e-4)
    ap.add_argument("--n-harmful", type=int, default=80)
    ap.add_argument("--n-benign", type=int, default=80)
    ap.add_argument("--no-borderline", action="store_true")
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--max-words", type=int, default=60)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--max-steps", type=int, default=0)
    ap.add_argument("--eval", default="60,60,100")
    ap.add_argument("--eval-tokens", type=int, default=96)
    ap.add_argument("--base-only", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--init-adapter", default=None)
    args = ap.parse_args()

    settings = Settings()
    data_dir = settings.data_dir
    n_eval = tuple(int(x) for x in args.eval.split(","))
    result: dict = {"name": args.name, "args": vars(args)}
    t_start = time.monotonic()
    if args.base_only:
        result["eval"] = evaluate(args.upstream, args.served, data_dir, n_eval, args.eval_tokens)  # type: ignore[arg-type]
    else:
        excluded = set(never_train(data_dir))
        pool = [it for it in load_seed_items(data_dir) if normalize_prompt(it.prompt) not in excluded]
        train_pool, _val = stratified_split(pool, 60)
        borderline = [] if args.no_borderline else load_borderline_items()
        harmful = [it for it in train_pool if it.harm_level >= 1][: args.n_harmful]
        benign = [it for it in train_pool if it.harm_level == 0][: args.n_benign]
        t0 = time.monotonic()
        own = own_answers(args.upstream, args.served, [it.prompt for it in [*harmful, *benign, *borderline]],
                          max_tokens=args.max_words * 2)
        result["own_answers_s"] = round(time.monotonic() - t0, 1)
        examples, report = build_kto_set([], [*harmful, *benign], own, excluded=excluded, seed_harmful=args.n_harmful,
                                         seed_benign=args.n_benign, borderline=borderline,
                                         max_completion_words=args.max_words)
        result["kto_counts"] = report.kto
        rs = RetrainSettings(kto_learning_rate=args.kto_lr, lora_r=args.lora_r,
                             lora_alpha=2 * args.lora_r, lora_target_modules=args.targets.split(","),
                             max_length=args.max_length, batch_size=args.batch, kto_beta=args.beta,
                             torch_threads=args.threads)
        from careloop.retrain.train import train_kto

        out_dir = CACHE / "adapters" / args.name
        stage = train_kto(Path(args.model_dir), examples, out_dir / "kto", rs, max_steps=args.max_steps or None,
                          init_adapter=Path(args.init_adapter) if args.init_adapter else None,
                          log_path=out_dir / "train_log.jsonl", progress=False)
        result["kto"] = {"steps": stage.steps, "seconds": round(stage.seconds, 1),
                         "s_per_step": round(stage.seconds / max(1, stage.steps), 2),
                         "last_logs": [h for h in stage.log_history[-2:]]}
        adapter_dir = out_dir / "kto"
        name = f"recipe-{args.name}-{int(time.time())}"
        load_adapter(args.upstream, name, str(adapter_dir))
        try:
            result["eval"] = evaluate(args.upstream, name, data_dir, n_eval, args.eval_tokens)  # type: ignore[arg-type]
        finally:
            unload_adapter(args.upstream, name)
    result["wall_s"] = round(time.monotonic() - t_start, 1)
    line = json.dumps(result)
    print(line)
    res = settings.home / "bench"
    res.mkdir(parents=True, exist_ok=True)
    with (res / "recipe.jsonl").open("a") as fh:
        fh.write(line + "\n")


if __name__ == "__main__":
    main()
