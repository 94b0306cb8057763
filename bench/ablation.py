"""The paper's comparison on identical splits: one cycle of KTO alone, DPO alone and KTO→DPO, against the base.

    .venv/bin/python bench/ablation.py --home ~/.careloop [--run N] [--dpo-alone-lr 2e-5 3e-4] [--sizes 30 30 50]

Takes a finished run's cycle 1 — its KTO set, its DPO pairs, its validation split and its two checkpoints (KTO,
and KTO→DPO where DPO ran), all built from the base policy's replies — and trains DPO alone from the base on the
same pairs with the run's recipe (once per --dpo-alone-lr: the run's DPO rate is tuned as a refinement after KTO,
so DPO alone is also tried at KTO's rate). Every arm is then scored on the run's validation split (graded by the
reference judge, as the run grades it) and on the held-out sample through vLLM (as `bench/realign_seeds.py`
does). Needs the home's vLLM running (`careloop model serve`). Prints a table; writes JSON and a plot.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from realign_seeds import COLUMNS, heldout_of_model

from careloop.core.settings import RetrainSettings, Settings, load_settings
from careloop.demo import demo_settings
from careloop.retrain.datasets import DPOPair, PromptItem
from careloop.retrain.evaluate import EvalResult, evaluate_model, paired_gain
from careloop.retrain.generate import load_adapter, unload_adapter


def read_rows(path: Path) -> list[dict[str, Any]]:
    """A JSON Lines file's rows."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def latest_run(settings: Settings) -> Path:
    """The newest run folder whose cycle 1 trained."""
    runs = sorted(settings.runs_dir.glob("run-*"), key=lambda p: int(p.name.split("-")[1]))
    for run in reversed(runs):
        if (run / "cycle-1" / "kto" / "adapter_config.json").is_file():
            return run
    raise SystemExit(f"no run with a trained cycle 1 under {settings.runs_dir} (run `careloop demo` first)")


def validation_of(settings: Settings, model: str, items: list[PromptItem], judge: Any) -> EvalResult:
    """One served model's figures on the validation split, as the run computes them."""
    return asyncio.run(evaluate_model(settings.upstream, model, items, judge, alpha=settings.monitor.alpha,
                                      max_tokens=settings.retrain.validation_max_tokens,
                                      api_key=settings.upstream_api_key))


def score_arm(settings: Settings, label: str, adapter: Path | None, base_model: str, items: list[PromptItem],
              judge: Any, sizes: tuple[int, int, int]) -> tuple[dict[str, Any], EvalResult]:
    """An arm's validation and held-out figures (the base model itself when `adapter` is None)."""
    model = base_model
    if adapter is not None:
        model = f"ablation-{label.replace(' ', '-').replace('→', '-')}-{int(time.time())}"
        load_adapter(settings.upstream, model, str(adapter), api_key=settings.upstream_api_key)
    try:
        ev = validation_of(settings, model, items, judge)
        row = heldout_of_model(settings, model, sizes, settings.demo.max_tokens)
    finally:
        if adapter is not None:
            unload_adapter(settings.upstream, model, api_key=settings.upstream_api_key)
    row = {"arm": label, "adapter": str(adapter) if adapter else None, "validation": ev.summary(), **row}
    print(json.dumps(row, default=str), flush=True)
    return row, ev


def main() -> None:
    """Train DPO alone on a run's cycle-1 pairs, score every arm, print the table, write JSON and a plot."""
    from careloop.monitor.judges import build_judge
    from careloop.retrain.train import train_dpo

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", type=Path, required=True, help="a careloop home with a finished run")
    ap.add_argument("--run", type=int, default=None, help="the run id (default: the newest with a cycle 1)")
    ap.add_argument("--dpo-alone-lr", type=float, nargs="+", default=None,
                    help="learning rates for DPO alone (default: the run's DPO rate and its KTO rate)")
    ap.add_argument("--sizes", type=int, nargs=3, default=None, metavar=("HARMFUL", "BENIGN", "XSTEST"),
                    help="held-out sample sizes (default: the demo's)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/ablation"))
    args = ap.parse_args()
    os.environ["CARELOOP_HOME"] = str(args.home)
    settings = demo_settings(load_settings())
    run_dir = settings.runs_dir / f"run-{args.run}" if args.run else latest_run(settings)
    report = json.loads((run_dir / "report.json").read_text())
    rs = RetrainSettings(**report["settings"])  # the run's own recipe and seed
    settings.retrain = rs.model_copy(update={"torch_threads": settings.retrain.torch_threads})
    items = [PromptItem(**r) for r in read_rows(run_dir / "validation.jsonl")]
    pairs = [DPOPair(**r) for r in read_rows(run_dir / "cycle-1" / "dpo.jsonl")]
    kto_n = len(read_rows(run_dir / "cycle-1" / "kto.jsonl"))
    d = settings.demo
    sizes = tuple(args.sizes) if args.sizes else (d.eval_harmful, d.eval_benign, d.eval_xstest_safe)
    print(f"{run_dir}: cycle 1 had {kto_n} KTO examples and {len(pairs)} DPO pairs; validation {len(items)} "
          f"prompts; held-out {sizes}; seed {rs.seed}", flush=True)

    arms: list[tuple[str, Path | None]] = [("base", None), ("KTO", run_dir / "cycle-1" / "kto")]
    if (run_dir / "cycle-1" / "dpo" / "adapter_config.json").is_file():
        arms.append(("KTO→DPO", run_dir / "cycle-1" / "dpo"))
    trained: dict[str, Any] = {}
    for lr in args.dpo_alone_lr or [rs.dpo_learning_rate, rs.kto_learning_rate]:
        out = args.out / f"dpo-alone-lr{lr:g}"
        result = train_dpo(settings.base_model_dir, pairs, out, rs.model_copy(update={"dpo_learning_rate": lr}),
                           init_adapter=None, progress=True)
        trained[f"DPO alone (lr {lr:g})"] = {"steps": result.steps, "seconds": round(result.seconds, 1)}
        arms.append((f"DPO alone (lr {lr:g})", out))

    judge = build_judge(settings.monitor.reference_judge, settings)
    rows, evals = [], {}
    try:
        for label, adapter in arms:
            row, evals[label] = score_arm(settings, label, adapter, report["base_target"], items, judge,
                                          sizes)  # type: ignore[arg-type]
            rows.append(row)
    finally:
        asyncio.run(judge.aclose())
    for row in rows:  # paired gains on validation, the run's own statistic
        row["vs_base"] = asdict(paired_gain(evals[row["arm"]], evals["base"], alpha=settings.monitor.alpha,
                                            seed=rs.seed))
        row["vs_kto"] = asdict(paired_gain(evals[row["arm"]], evals["KTO"], alpha=settings.monitor.alpha,
                                           seed=rs.seed))
        row["training"] = trained.get(row["arm"])
    _print_table(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ablation.json").write_text(json.dumps(
        {"run": str(run_dir), "seed": rs.seed, "kto_examples": kto_n, "dpo_pairs": len(pairs),
         "validation_prompts": len(items), "heldout_sizes": sizes, "rows": rows}, indent=2, default=str))
    _plot(rows, args.out / "ablation.png")
    print(f"wrote {args.out / 'ablation.json'} and ablation.png")


def _print_table(rows: list[dict[str, Any]]) -> None:
    print(f"\n{'arm':22} {'val SS':>7} {'val ERR':>7} {'val Overall':>11} {'vs KTO':>7} {'P(>KTO)':>7} "
          + " ".join(f"{c:>24}" for c in COLUMNS))
    for r in rows:
        v = r["validation"]
        print(f"{r['arm']:22} {v['safety_score']:>7.3f} {v['err']:>7.3f} {v['overall']:>11.3f} "
              f"{r['vs_kto']['gain']:>+7.3f} {r['vs_kto']['p_better']:>7.2f} "
              + " ".join(f"{r[c]:>24.3f}" for c in COLUMNS))


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [*COLUMNS[:3], "Overall"]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    width = 0.8 / len(rows)
    for i, r in enumerate(rows):
        ax.bar([j + i * width for j in range(len(cols))], [r[c] for c in cols], width, label=r["arm"])
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cols))], cols, fontsize=8)
    ax.set_ylabel("held-out share / score")
    ax.set_title("one cycle on identical splits: held-out figures per arm", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
