"""Recalibration, measured: κ of the reference judge on SmolLM2's replies before and after training it with
100, 200 and all of a pool of human labels, and on the XSTest source models it did not see.

    PYTHONPATH=. nice -n 10 .venv/bin/python bench/recalibration_bench.py           # 3 draws per size
    PYTHONPATH=. nice -n 10 .venv/bin/python bench/recalibration_bench.py --variants weight-3 balanced --check
    ... --split console --share 0.3 --features /tmp/feats.npz                     # the console's hash split

`data/smollm2/labelled.jsonl` stands in for the people's labels. A fixed share of its prompts is held out (every
reply to a held-out prompt is, so no prompt leaks into the audit); n labels are drawn by prompt from the rest,
with a different draw per seed. "Before" is the judge the console's recalibration starts from (the production
`DistilledConfig`, no human labels); "after" is what `careloop.console.recalibrate.run` trains: the same
`training_sets` with the drawn labels as `extra` (source "store", as `review.human_examples` gives them), the same
per-example weights and the same response head. Only the frozen encoder's features are computed once and shared
(they depend on the text alone); `--check` retrains the "all labels" judge through `train_distilled` and audits
it as the console does, to show the shortcut gives the same κ. κ is Cohen's on the response class (Accept /
Caution / Refuse), the label the judge acts on and the one `recalibrate` audits.

XSTest is measured leave-one-model-out (trained on two source models, scored on the third, before and after the
same labels are added); the console's own check (trained on all three, scored on all of XSTest) is printed beside
it. Variants are principled changes, fixed before looking at the held-out part: `weight-W` counts each human label
W times, `balanced` uses the head's class-balanced weights (Caution and Refuse are rare in SmolLM2's replies).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from judge_bench import predict

from careloop.console.recalibrate import MAX_XSTEST_LOSS, decide, split_by_prompt
from careloop.monitor.datasets import XSTEST_MODELS, LabelledExample, load_smollm2, load_xstest
from careloop.monitor.judges.distilled_artefacts import LinearHead
from careloop.monitor.judges.distilled_features import DistilledConfig, Featurizer, load_prompt_encoder
from careloop.monitor.judges.distilled_train import (
    TrainingSample,
    response_weights,
    train_linear_head,
    training_sets,
)
from careloop.monitor.scoring import cohen_kappa, confusion_matrix

ROOT = Path(__file__).resolve().parents[1]  # the tree the bench is run from, whichever careloop is imported
DATA = ROOT / "data"
DOCS = ROOT / "docs"
SIZES: tuple[int | None, ...] = (100, 200, None)  # None: the whole pool
HELDOUT_SHARE = 0.35
GOAL_KAPPA = 0.7
Featurize = Callable[[Sequence[str], Sequence[str]], np.ndarray]


@dataclass(frozen=True)
class Variant:
    """One way of recalibrating: the training config and how much each human label weighs."""

    name: str
    cfg: DistilledConfig
    label_weight: float = 1.0
    sample: TrainingSample = field(default_factory=TrainingSample)


def variants(base: DistilledConfig, sample: TrainingSample = TrainingSample()) -> dict[str, Variant]:
    """The recalibration the console runs and the principled changes the bench may try beside it."""
    return {"console": Variant("console", base, sample=sample),
            "weight-3": Variant("weight-3", base, 3.0, sample),
            "balanced": Variant("balanced", replace(base, balanced=True), sample=sample)}


def prompt_of(e: LabelledExample) -> str:
    """The prompt as `recalibrate.split_by_prompt` compares it (case and spacing folded)."""
    return " ".join(e.prompt.lower().split())


def by_prompt(examples: Sequence[LabelledExample]) -> dict[str, list[LabelledExample]]:
    """Examples grouped by prompt, in first-seen order."""
    groups: dict[str, list[LabelledExample]] = {}
    for e in examples:
        groups.setdefault(prompt_of(e), []).append(e)
    return groups


def heldout_split(examples: Sequence[LabelledExample], share: float = HELDOUT_SHARE, seed: int = 0,
                  how: str = "stratified") -> tuple[list[LabelledExample], list[LabelledExample]]:
    """(pool, held out) by prompt. "stratified": a seeded draw of prompts, as many of those with a non-Accept
    reply as of the others; "console": `recalibrate.split_by_prompt` (a hash of the prompt)."""
    if how == "console":
        return split_by_prompt(examples, share)
    groups = by_prompt(examples)
    held: set[str] = set()
    rng = random.Random(seed)
    for flagged in (False, True):
        keys = sorted(k for k, g in groups.items() if any(e.response_class != "Accept" for e in g) == flagged)
        rng.shuffle(keys)
        held.update(keys[: round(share * len(keys))])
    return ([e for e in examples if prompt_of(e) not in held], [e for e in examples if prompt_of(e) in held])


def draw(pool: Sequence[LabelledExample], n: int | None, seed: int) -> list[LabelledExample]:
    """About n labels of the pool, whole prompts at a time (the first prompts of a seeded shuffle); all if None."""
    if n is None or n >= len(pool):
        return list(pool)
    groups = by_prompt(pool)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    out: list[LabelledExample] = []
    for k in keys:
        if len(out) >= n:
            break
        out += groups[k]
    return out


def as_store_labels(examples: Sequence[LabelledExample]) -> list[LabelledExample]:
    """The labels as the console reads them from the store (`review.human_examples`: source "store")."""
    return [replace(e, source="store") for e in examples]


@dataclass
class FeatureCache:
    """Response-head features by (prompt, response), computed once: they depend on the text alone."""

    featurize: Featurize
    rows: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)

    def __call__(self, examples: Sequence[LabelledExample]) -> np.ndarray:
        """The feature rows of the examples, computing those not seen yet in one pass."""
        keys = [(e.prompt, e.response or "") for e in examples]
        missing = list(dict.fromkeys(k for k in keys if k not in self.rows))
        for start in range(0, len(missing), 256):
            chunk = missing[start:start + 256]
            x = self.featurize([p for p, _ in chunk], [r for _, r in chunk])
            self.rows.update(zip(chunk, x, strict=True))
        return np.stack([self.rows[k] for k in keys])

    def save(self, path: Path) -> None:
        """Write the rows computed so far (to rerun the bench without the encoder)."""
        keys = list(self.rows)
        np.savez_compressed(path, keys=np.asarray(json.dumps(keys)), x=np.stack([self.rows[k] for k in keys]))

    def load(self, path: Path) -> None:
        """Read rows that `save` wrote."""
        data = np.load(path)
        self.rows.update(zip((tuple(k) for k in json.loads(str(data["keys"]))), data["x"], strict=True))


def production_features(cfg: DistilledConfig) -> Featurize:
    """The featurizer `train_distilled` trains with (bf16 encoder where the CPU has native bf16), loaded when
    first called."""
    loaded: list[Callable[[Sequence[str]], np.ndarray]] = []  # the judge reads the reply alone

    def featurize(prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        if not loaded:
            import torch

            from careloop.core.hardware import native_bf16

            encoder, tokenizer = load_prompt_encoder()
            if cfg.bf16_inference and native_bf16():
                encoder = encoder.to(torch.bfloat16)
            loaded.append(Featurizer(encoder, tokenizer, cfg).response_features)
        return loaded[0](responses)

    return featurize


def fit_response_head(features: FeatureCache, variant: Variant, models: Sequence[str],
                      labels: Sequence[LabelledExample], data_dir: Path = DATA) -> tuple[LinearHead, list[str]]:
    """The response head `train_distilled` fits on these XSTest models plus `labels` (as extra); and the ids of
    the human labels it trained on (openings included)."""
    rows, _ = training_sets(data_dir, variant.cfg, models, labels, sample=variant.sample)
    weights = response_weights(rows, variant.cfg)
    weights *= np.asarray([variant.label_weight if e.source == "store" else 1.0 for e in rows])
    head = train_linear_head(features(rows), [e.response_class or "" for e in rows], variant.cfg.response_c,
                             variant.cfg.balanced, weights)
    return head, [e.id for e in rows if e.source == "store"]


def kappa(head: LinearHead, features: FeatureCache, examples: Sequence[LabelledExample]) -> float:
    """Cohen's κ of the head's response class (its most likely class, as the judge acts) against the labels."""
    return cohen_kappa([e.response_class or "" for e in examples], predict(head, features(examples)))


@dataclass
class Measure:
    """κ of one trained judge: held-out human labels, each held-out XSTest model, XSTest as the console checks."""

    variant: str
    n_asked: int | None
    seed: int | None
    n_train: int
    in_domain: float
    xstest_lomo: dict[str, float]
    xstest_seen: float
    train_ids: list[str] = field(repr=False)
    confusion: list[list[int]] = field(default_factory=list)  # held-out human labels (rows) × verdicts

    @property
    def xstest_mean(self) -> float:
        """Mean κ over the held-out XSTest models."""
        return float(np.mean(list(self.xstest_lomo.values())))


def measure(features: FeatureCache, variant: Variant, labels: Sequence[LabelledExample],
            heldout: Sequence[LabelledExample], n_asked: int | None = None, seed: int | None = None,
            data_dir: Path = DATA) -> Measure:
    """Train with `labels` (none: the judge before) and score on `heldout`, XSTest per held-out model and all."""
    labels = as_store_labels(labels)
    head, ids = fit_response_head(features, variant, XSTEST_MODELS, labels, data_dir)
    xstest_all: list[LabelledExample] = []
    lomo: dict[str, float] = {}
    for model in XSTEST_MODELS:
        test = load_xstest(data_dir, (model,))
        if variant.sample.heldout and variant.sample.heldout < len(test):
            test = random.Random(variant.cfg.seed).sample(test, variant.sample.heldout)
        xstest_all += test
        others = [m for m in XSTEST_MODELS if m != model]
        lomo[model] = kappa(fit_response_head(features, variant, others, labels, data_dir)[0], features, test)
    truth = [e.response_class or "" for e in heldout]
    pred = predict(head, features(heldout))
    return Measure(variant.name, n_asked, seed, len(labels), cohen_kappa(truth, pred), lomo,
                   kappa(head, features, xstest_all), ids, confusion_matrix(truth, pred))


def run_bench(features: FeatureCache, labelled: Sequence[LabelledExample], chosen: Sequence[Variant],
              sizes: Sequence[int | None] = SIZES, seeds: int = 3, share: float = HELDOUT_SHARE,
              split: str = "stratified", data_dir: Path = DATA, log: Callable[[str], None] = print,
              ) -> tuple[Measure, list[Measure], list[LabelledExample]]:
    """(before, after per variant × size × draw, the held-out labels): the bench's core. The first variant is
    the console's recalibration; "before" is its config trained without human labels."""
    pool, heldout = heldout_split(labelled, share, how=split)
    log(f"{len(pool)} labels in the pool ({len(by_prompt(pool))} prompts), {len(heldout)} held out "
        f"({len(by_prompt(heldout))} prompts)")
    before = measure(features, chosen[0], [], heldout, 0, None, data_dir)
    log(f"before: {summary(before)}")
    after: list[Measure] = []
    for variant in chosen:
        for n in sizes:
            for seed in (range(seeds) if n is not None and n < len(pool) else range(1)):
                t0 = time.monotonic()
                m = measure(features, variant, draw(pool, n, seed), heldout, n, seed, data_dir)
                after.append(m)
                log(f"{variant.name} n={n or 'all'} seed={seed}: {summary(m)} ({time.monotonic() - t0:.0f} s)")
    return before, after, heldout


def summary(m: Measure) -> str:
    """One line of a measure."""
    lomo = " ".join(f"{k} {v:.3f}" for k, v in m.xstest_lomo.items())
    return (f"n={m.n_train} in-domain κ {m.in_domain:.3f}; XSTest held-out {lomo} (mean {m.xstest_mean:.3f}); "
            f"XSTest seen {m.xstest_seen:.3f}")


def _stat(values: Sequence[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}".rjust(17)
    return f"{statistics.mean(values):.3f} [{min(values):.3f}–{max(values):.3f}]".rjust(17)


def table(before: Measure, after: Sequence[Measure]) -> list[str]:
    """The markdown table: mean [min–max] over draws of each variant and size, the console's decision."""
    lines = ["| judge | labels | draws | κ held-out SmolLM2 | κ XSTest held-out models (mean) | Δ XSTest | "
             "κ XSTest seen | console accepts |", "|---|---|---|---|---|---|---|---|",
             f"| before (shipped) | 0 | – | {before.in_domain:.3f} | {before.xstest_mean:.3f} | – | "
             f"{before.xstest_seen:.3f} | – |"]
    keys = list(dict.fromkeys((m.variant, m.n_asked) for m in after))
    for name, n in keys:
        ms = [m for m in after if (m.variant, m.n_asked) == (name, n)]
        ns = sorted({m.n_train for m in ms})
        wins = sum(decide(before.in_domain, m.in_domain, before.xstest_seen, m.xstest_seen)[0] for m in ms)
        delta = [m.xstest_mean - before.xstest_mean for m in ms]
        lines.append(f"| after, {name} | {ns[0] if len(ns) == 1 else f'{ns[0]}–{ns[-1]}'} | {len(ms)} | "
                     f"{_stat([m.in_domain for m in ms]).strip()} | {_stat([m.xstest_mean for m in ms]).strip()} | "
                     f"{_stat(delta).strip()} | {_stat([m.xstest_seen for m in ms]).strip()} | {wins}/{len(ms)} |")
    return lines


def plot(before: Measure, after: Sequence[Measure], path: Path) -> None:
    """κ against the number of labels: held-out SmolLM2 replies and held-out XSTest models, per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
    panels = (("held-out SmolLM2 replies (human labels)", lambda m: m.in_domain, before.in_domain, GOAL_KAPPA),
              ("XSTest held-out models (mean)", lambda m: m.xstest_mean, before.xstest_mean,
               before.xstest_mean - MAX_XSTEST_LOSS))
    for ax, (title, get, base, goal) in zip(axes, panels, strict=True):
        for k, name in enumerate(dict.fromkeys(m.variant for m in after)):
            ms = [m for m in after if m.variant == name]
            ax.scatter([m.n_train for m in ms], [get(m) for m in ms], s=14, alpha=0.5, color=f"C{k}")
            sizes = list(dict.fromkeys(m.n_asked for m in ms))
            means = [(float(np.mean([m.n_train for m in ms if m.n_asked == n])),
                      float(np.mean([get(m) for m in ms if m.n_asked == n]))) for n in sizes]
            ax.plot([0] + [x for x, _ in means], [base] + [y for _, y in means], "-o", color=f"C{k}",
                    label=f"after ({name})")
        ax.axhline(base, color="grey", ls=":", label="before (shipped)")
        ax.axhline(goal, color="red", ls="--", lw=1, label="goal" if goal == GOAL_KAPPA else "before − 0.02")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("human labels used in recalibration")
        ax.set_ylabel("Cohen's κ (response class)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def in_domain_only(features: FeatureCache, pool: Sequence[LabelledExample], heldout: Sequence[LabelledExample],
                   cfg: DistilledConfig) -> float:
    """κ on the held-out labels of the same response head trained on the pool's labels alone (and their opening
    sentences): what these features can learn of SmolLM2's replies without the public data (a diagnostic)."""
    from careloop.monitor.judges.distilled_train import opening_sentences

    rows = [*pool, *opening_sentences(pool)]
    head = train_linear_head(features(rows), [e.response_class or "" for e in rows], cfg.response_c, cfg.balanced,
                             np.asarray([cfg.opening_weight if "opening_of" in e.meta else 1.0 for e in rows]))
    return kappa(head, features, heldout)


def check(labels: Sequence[LabelledExample], heldout: Sequence[LabelledExample], cfg: DistilledConfig,
          expect: float) -> float:
    """κ on the held-out labels of a judge trained through `train_distilled` and audited as the console does."""
    import tempfile

    from careloop.console.recalibrate import _kappa
    from careloop.core.settings import Settings
    from careloop.monitor.judges.distilled_train import train_distilled

    with tempfile.TemporaryDirectory() as home:
        settings = Settings(home=Path(home), data_dir=DATA)
        report = train_distilled(settings, cfg, extra=as_store_labels(labels))
        got = _kappa(report.version, settings, heldout)
    print(f"check: train_distilled + recalibrate._kappa on the held-out labels: κ {got:.3f} (bench: {expect:.3f})")
    return float("nan") if got is None else got


def main() -> None:
    """Run the bench, print the table, write the plot (and JSON)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3, help="draws per size below the whole pool")
    ap.add_argument("--share", type=float, default=HELDOUT_SHARE, help="share of prompts held out")
    ap.add_argument("--split", choices=("stratified", "console"), default="stratified")
    ap.add_argument("--variants", nargs="*", default=[], help="changes to try besides the console's recalibration")
    ap.add_argument("--check", action="store_true", help="retrain the all-labels judge through train_distilled")
    ap.add_argument("--plot", type=Path, default=DOCS / "recalibration.png")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--features", type=Path, default=None, help="feature rows to read if present, and to write")
    args = ap.parse_args()
    cfg = DistilledConfig()
    known = variants(cfg)
    chosen = [known["console"]] + [known[v] for v in args.variants]
    labelled = [e for e in load_smollm2(DATA) if e.response and e.response_class]
    t0 = time.monotonic()
    features = FeatureCache(production_features(cfg))
    if args.features and args.features.is_file():
        features.load(args.features)
    before, after, heldout = run_bench(features, labelled, chosen, seeds=args.seeds, share=args.share,
                                       split=args.split)
    if args.features:
        features.save(args.features)
    print(f"\n{len(heldout)} held-out labels; {time.monotonic() - t0:.0f} s\n")
    print("\n".join(table(before, after)))
    whole = next(m for m in after if m.variant == "console" and m.n_asked is None)
    print("\nheld-out human labels (rows: Accept, Caution, Refuse) × verdicts: before "
          f"{before.confusion}, after with all labels {whole.confusion}")
    pool = heldout_split(labelled, args.share, how=args.split)[0]
    print(f"diagnostic: the same head trained on the {len(pool)} pool labels alone: κ "
          f"{in_domain_only(features, pool, heldout, cfg):.3f} on the held-out labels")
    plot(before, after, args.plot)
    print(f"\nplot: {args.plot}")
    if args.check:
        check(pool, heldout, cfg, whole.in_domain)
    if args.json:
        args.json.write_text(json.dumps({"before": asdict(before), "after": [asdict(m) for m in after]}, indent=1))


if __name__ == "__main__":
    main()

