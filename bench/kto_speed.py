"""KTO step cost side by side: the loss with its KL pass vs. without, at two sequence lengths, on one set.

    .venv/bin/python bench/kto_speed.py [--steps 6] [--repeats 2] [--json out.json]

Builds the default seed mix (no vLLM needed: known reference replies stand in for the policy's own), trains
`--steps` KTO steps per configuration from a fresh LoRA, in turn, `--repeats` times (interleaved, so machine
load hits every configuration alike), and prints seconds per step — CPU seconds of the training loop (with one
torch thread these hardly move with the machine's load) and wall seconds — with the spread and each one's ratio
to loss "kto" with its KL pass at max length 128. Model loading and tokenisation are not timed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from careloop.core.settings import RetrainSettings, Settings
from careloop.retrain.datasets import (
    build_kto_set,
    load_borderline_items,
    load_seed_items,
    normalize_prompt,
    stratified_split,
)
from careloop.retrain.heldout import never_train

CONFIGS: list[tuple[str, dict[str, object]]] = [
    ("kto, len 128 (the KL pass)", {"kto_loss_type": "kto", "max_length": 128}),
    ("apo_zero_unpaired, len 128 (default)", {"kto_loss_type": "apo_zero_unpaired", "max_length": 128}),
    ("kto, len 96", {"kto_loss_type": "kto", "max_length": 96}),
    ("apo_zero_unpaired, len 96", {"kto_loss_type": "apo_zero_unpaired", "max_length": 96}),
    ("apo_zero_unpaired, len 128, 2 threads", {"kto_loss_type": "apo_zero_unpaired", "max_length": 128,
                                               "torch_threads": 2}),
]


def kto_examples(settings: Settings) -> list:
    """The default seed mix of a run's KTO set, with reference replies as the policy's own answers."""
    data_dir = settings.data_dir
    rs = settings.retrain
    excluded = set(never_train(data_dir))
    pool = [it for it in load_seed_items(data_dir) if normalize_prompt(it.prompt) not in excluded]
    train_pool, _ = stratified_split(pool, rs.validation_size)
    borderline = load_borderline_items()
    own = {normalize_prompt(it.prompt): it.reference for it in [*train_pool, *borderline]
           if it.reference and it.harm_level == 0}
    examples, _ = build_kto_set([], train_pool, own, excluded=excluded, seed_harmful=rs.seed_harmful,
                                seed_benign=rs.seed_benign, borderline=borderline,
                                max_completion_words=rs.max_completion_words)
    return examples


def main() -> None:
    """Time KTO steps per configuration and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--only", nargs="+", default=None, metavar="TEXT",
                    help="time only the configurations whose name holds one of these (the first is the baseline)")
    args = ap.parse_args()
    configs = [(n, o) for n, o in CONFIGS if not args.only or any(t in n for t in args.only)]

    from careloop.modelprep import prepare_model
    from careloop.retrain.train import train_kto

    settings = Settings()
    model_dir = prepare_model(settings.base_model_dir)
    examples = kto_examples(settings)
    print(f"{len(examples)} KTO examples; {args.steps} steps x {args.repeats} repeats per configuration", flush=True)
    per_step: dict[str, list[float]] = {name: [] for name, _ in configs}
    cpu_step: dict[str, list[float]] = {name: [] for name, _ in configs}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for name, overrides in configs:
                rs = RetrainSettings(**{**settings.retrain.model_dump(), **overrides})
                t0 = time.monotonic()
                stage = train_kto(model_dir, examples, Path(tmp) / f"{rep}-{len(per_step[name])}", rs,
                                  max_steps=args.steps, progress=False)
                cpu_step[name].append(stage.cpu_seconds / max(1, stage.steps))
                per_step[name].append(stage.seconds / max(1, stage.steps))
                print(f"  [{rep + 1}/{args.repeats}] {name}: {cpu_step[name][-1]:.2f} CPU s/step, "
                      f"{per_step[name][-1]:.2f} wall s/step ({time.monotonic() - t0:.0f} s with loading)", flush=True)
    base, wall_base = (statistics.mean(d[configs[0][0]]) for d in (cpu_step, per_step))
    print(f"\n| configuration | CPU s/step (mean) | min–max | CPU vs {configs[0][0]} | wall s/step (mean) "
          "| min–max | wall vs it |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for name, _ in configs:
        xs, ws = cpu_step[name], per_step[name]
        mean, wall = statistics.mean(xs), statistics.mean(ws)
        rows.append({"config": name, "cpu_s_per_step": xs, "wall_s_per_step": ws, "mean": mean, "ratio": mean / base,
                     "wall_ratio": wall / wall_base})
        print(f"| {name} | {mean:.2f} | {min(xs):.2f}–{max(xs):.2f} | {mean / base:.2f}× | {wall:.2f} "
              f"| {min(ws):.2f}–{max(ws):.2f} | {wall / wall_base:.2f}× |")
    if args.json:
        args.json.write_text(json.dumps({"examples": len(examples), "steps": args.steps, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
