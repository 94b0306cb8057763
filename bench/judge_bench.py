"""Judge benchmark: κ against human labels on held-out XSTest source models, and verdicts/s.

    .venv/bin/python bench/judge_bench.py --budget              # κ vs verdicts/s: opening length × depth (v3)
    .venv/bin/python bench/judge_bench.py                       # v2-era feature options, leave-one-model-out
    .venv/bin/python bench/judge_bench.py --in-domain           # on SmolLM2's own labelled replies
    .venv/bin/python bench/judge_bench.py --splits              # κ by kind of held-out split, with floor and GPT-4
    .venv/bin/python bench/judge_bench.py --adapt               # v3 adapted to the held-out replies, no labels
    .venv/bin/python bench/judge_bench.py --cross-encoder       # the fine-tuned cross-encoder, per fold
    .venv/bin/python bench/judge_bench.py --rate 64 32 16       # whole-judge verdicts/s by encoder batch
    .venv/bin/python bench/judge_bench.py --skip-distilled --llm http://127.0.0.1:8000 --concurrency 1 4 16 --limit 150

Distilled options share one pass of frozen MiniLM features over all data; each fold fits its heads on two
XSTest models (+ the medical sets) and is scored on the third. Baselines printed side by side: the GPT-4
judge's own labels in the data, a refusal string match, and frozen MiniLM + logistic regression (the floor).
Throughput is measured on this machine (say how loaded it was when you quote it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from experiments.cross_encoder import CrossEncoderConfig

from careloop.core.hardware import native_bf16
from careloop.core.settings import REPO_ROOT
from careloop.monitor.datasets import XSTEST_MODELS, LabelledExample, load_medquad, load_medsafetybench, load_xstest
from careloop.monitor.judges.distilled_artefacts import LinearHead
from careloop.monitor.judges.distilled_features import (
    REFUSAL_RE,
    DistilledConfig,
    Featurizer,
    embed_texts,
    hand_features,
    length_sorted_batches,
    load_prompt_encoder,
    mean_pool,
    truncated_encoder,
)
from careloop.monitor.judges.distilled_train import TrainingSample, opening_sentences, train_linear_head
from careloop.monitor.scoring import RESPONSE_CLASSES, cohen_kappa, confusion_matrix, normalize_class

DATA = REPO_ROOT / "data"
JOINT_TOKENS = 128  # prompt and reply in one segment (the floor's input)


def predict(head: LinearHead, x: np.ndarray) -> list[str]:
    """The most likely class of each feature row."""
    return [head.classes[i] for i in head.predict_proba(x).argmax(axis=1)]


def _gpt4(label: object) -> str:
    try:
        return normalize_class(str(label))
    except ValueError:
        return "Accept"  # a few rows hold free text instead of a label


def _regex(response: str) -> str:
    first = response.strip().split(".")[0][:300]
    return "Refuse" if REFUSAL_RE.search(first) else "Accept"


def features(items: list[LabelledExample], cfg: DistilledConfig,
             bf16: bool) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Every segment's embeddings and the hand features, with seconds per item of each."""
    import torch

    encoder, tok = load_prompt_encoder()
    if bf16:
        encoder = encoder.to(torch.bfloat16)
    prompts = [e.prompt for e in items]
    responses = [e.response or "" for e in items]
    out: dict[str, np.ndarray] = {}
    cost: dict[str, float] = {}
    jobs = {"P": (prompts, cfg.prompt_tokens, False), "H": (responses, cfg.head_tokens, False),
            "T": (responses, cfg.tail_tokens, True),
            "J": ([f"{p} [SEP] {r}" for p, r in zip(prompts, responses, strict=True)], JOINT_TOKENS, False)}
    for key, (texts, n, from_end) in jobs.items():
        t0 = time.perf_counter()
        out[key] = embed_texts(encoder, tok, texts, n, from_end=from_end)
        cost[key] = (time.perf_counter() - t0) / len(items)
        print(f"  segment {key}: {1 / cost[key]:.0f} items/s", flush=True)
    t0 = time.perf_counter()
    out["F"] = np.asarray([hand_features(r) for r in responses], dtype=np.float32)
    cost["F"] = (time.perf_counter() - t0) / len(items)
    return out, cost


def base_items(cfg: DistilledConfig, sample: TrainingSample = TrainingSample(),
               ) -> tuple[list[LabelledExample], list[LabelledExample]]:
    """(XSTest rows, XSTest + the medical reference responses) that every judge benchmark starts from."""
    rng = random.Random(cfg.seed)
    xs = load_xstest(DATA)
    msb = load_medsafetybench(DATA)
    rng.shuffle(msb)
    mq = [e for e in load_medquad(DATA) if e.response]
    rng.shuffle(mq)
    return xs, xs + msb[: sample.medical] + mq[: sample.medical]


def distilled_bench(cfg: DistilledConfig, bf16: bool, out: dict[str, object]) -> None:
    """Leave-one-model-out κ of the distilled options, with the baselines beside them."""
    xs, items = base_items(cfg)
    print(f"features for {len(items)} items (bf16={bf16}) ...", flush=True)
    feats, cost = features(items, cfg, bf16)
    groups = np.array([e.group for e in items])
    labels = [e.response_class or "" for e in items]
    options = {"frozen MiniLM joint + LR (floor)": ["J"], "segments P+H+T + LR": ["P", "H", "T"],
               "segments P+H+T + hand cues + LR": ["P", "H", "T", "F"],
               "head+tail + hand cues + LR (v2 recipe)": ["H", "T", "F"],
               "head+tail+joint + hand cues + LR": ["H", "T", "J", "F"], "hand cues only + LR": ["F"]}
    rows: dict[str, dict[str, object]] = {}
    truth_by_fold = {m: [labels[i] for i in np.flatnonzero(groups == m)] for m in XSTEST_MODELS}
    for name, parts in options.items():
        x = np.hstack([feats[p] for p in parts])
        per_fold: dict[str, float] = {}
        for m in XSTEST_MODELS:
            tr, te = np.flatnonzero(groups != m), np.flatnonzero(groups == m)
            head = train_linear_head(x[tr], [labels[i] for i in tr], cfg.response_c, cfg.balanced)
            per_fold[m] = cohen_kappa(truth_by_fold[m], predict(head, x[te]))
        vps: float | None = 1 / sum(cost[p] for p in parts)
        rows[name] = {"folds": per_fold, "mean": float(np.mean(list(per_fold.values()))), "verdicts_per_s": vps}
    for name, fn in (("GPT-4 judge labels (in the data)", lambda e: _gpt4(e.meta.get("gpt4_judge_label"))),
                     ("refusal string match", lambda e: _regex(e.response or ""))):
        per_fold = {m: cohen_kappa(truth_by_fold[m], [fn(e) for e in xs if e.group == m]) for m in XSTEST_MODELS}
        rows[name] = {"folds": per_fold, "mean": float(np.mean(list(per_fold.values()))), "verdicts_per_s": None}
    print(f"\nresponse class, Cohen's κ vs human labels, held-out source model (bf16={bf16})")
    print(f"{'option':45s} " + " ".join(f"{m:>16s}" for m in XSTEST_MODELS) + f" {'mean':>6s} {'verdicts/s':>10s}")
    for name, r in rows.items():
        folds = r["folds"]
        assert isinstance(folds, dict)
        rate = r["verdicts_per_s"]
        assert rate is None or isinstance(rate, float)
        print(f"{name:45s} " + " ".join(f"{folds[m]:16.3f}" for m in XSTEST_MODELS)
              + f" {r['mean']:6.3f} {('-' if rate is None else f'{rate:.0f}'):>10s}")
    out["distilled"] = rows
    out["bf16"] = bf16
    # How would a head trained on XSTest alone label the medical responses? (decides their training labels)
    x = np.hstack([feats[p] for p in ("H", "T", "F")])
    xs_rows = np.flatnonzero(np.isin(groups, XSTEST_MODELS))
    head = train_linear_head(x[xs_rows], [labels[i] for i in xs_rows], cfg.response_c, cfg.balanced)
    medical: dict[str, dict[str, int]] = {}
    for source in ("medsafetybench", "medquad"):
        idx = [i for i, e in enumerate(items) if e.source == source]
        medical[source] = dict(Counter(predict(head, x[idx])))
        print(f"XSTest-only head on {source} reference responses: {medical[source]}")
    out["medical_labels"] = medical


Fold = tuple[np.ndarray, np.ndarray, np.ndarray]  # (training items, training opening sentences, test items)


def held_out_splits(items: Sequence[LabelledExample], openings: Sequence[LabelledExample],
                    prompt_folds: int = 5, seed: int = 0) -> dict[str, list[Fold]]:
    """Named held-out splits of the XSTest rows, each a list of folds: train on one source model (test on the
    other two), on two (test on the third, each in turn), or on all three with whole prompts held out."""
    groups, o_groups = np.array([e.group for e in items]), np.array([e.group for e in openings])

    def fold(held: Sequence[str]) -> Fold:
        return (np.flatnonzero(~np.isin(groups, held)), np.flatnonzero(~np.isin(o_groups, held)),
                np.flatnonzero(np.isin(groups, held)))

    splits: dict[str, list[Fold]] = {}
    for m in XSTEST_MODELS:
        held = [o for o in XSTEST_MODELS if o != m]
        splits[f"{m} -> {'+'.join(held)}"] = [fold(held)]
    splits["two -> the third, each in turn"] = [fold([m]) for m in XSTEST_MODELS]

    # XSTest ids are v2-<prompt number>-<model> (an opening's adds ":opening"): the same prompt under every model,
    # and its openings, land in the same fold; other rows always train.
    def prompt_of(e: LabelledExample) -> str:
        return e.id.split("-")[1] if e.group in XSTEST_MODELS else ""

    numbers = sorted({prompt_of(e) for e in items} - {""})
    random.Random(seed).shuffle(numbers)
    fold_of = {n: i % prompt_folds for i, n in enumerate(numbers)}
    fk = np.array([fold_of.get(prompt_of(e), -1) for e in items])
    ofk = np.array([fold_of.get(prompt_of(e), -1) for e in openings])
    splits["all three, held-out prompts"] = [(np.flatnonzero(fk != k), np.flatnonzero(ofk != k),
                                              np.flatnonzero(fk == k)) for k in range(prompt_folds)]
    return splits


def shipped_features(cfg: DistilledConfig, encoder: Any, tok: Any, bf16: bool, items: Sequence[LabelledExample],
                     openings: Sequence[LabelledExample]) -> tuple[np.ndarray, np.ndarray]:
    """The production featurizer's response features of the items and of their opening sentences."""
    import torch

    if bf16:
        encoder = encoder.to(torch.bfloat16)
    feat = Featurizer(encoder, tok, cfg)
    print(f"features for {len(items)} items and {len(openings)} opening sentences (bf16={bf16}) ...", flush=True)
    return (feat.response_features([e.response or "" for e in items]),
            feat.response_features([e.response or "" for e in openings]))


SPLIT_HEADER = (f"\n{'split (trained on -> held out)':58s} {'option':26s} {'κ per held-out model':>22s} {'mean':>6s}"
                f" {'pooled':>6s}")


def split_row(split: str, option: str, pred: dict[int, str], labels: Sequence[str],
              groups: np.ndarray) -> dict[str, Any]:
    """κ of one option's calls on one split's held-out rows, per source model, their mean and pooled; printed as
    a row of the table `splits_bench` heads."""
    idx = sorted(pred)
    per = {m: cohen_kappa([labels[i] for i in idx if groups[i] == m], [pred[i] for i in idx if groups[i] == m])
           for m in XSTEST_MODELS if any(groups[i] == m for i in idx)}
    row = {"split": split, "option": option, "per_model": per, "mean": float(np.mean(list(per.values()))),
           "pooled": cohen_kappa([labels[i] for i in idx], [pred[i] for i in idx])}
    print(f"{split:58s} {option:26s} {' '.join(f'{v:.3f}' for v in per.values()):>22s} {row['mean']:6.3f}"
          f" {row['pooled']:6.3f}", flush=True)
    return row


def splits_bench(cfg: DistilledConfig, bf16: bool, out: dict[str, object]) -> None:
    """κ of the shipped recipe on each kind of held-out split, per model and pooled, beside the floor (frozen
    MiniLM over the reply + logistic regression, XSTest rows only) and the GPT-4 judge's labels. The issue
    quotes its split (all three vendored models in training, two unseen ones pooled): GPT-4 0.59, floor 0.74;
    where those two land among these splits says which of ours is like it."""
    from sklearn.linear_model import LogisticRegression

    _, items = base_items(cfg)
    openings = opening_sentences(items)
    encoder, tok = load_prompt_encoder()
    floor_x = embed_texts(encoder, tok, [e.response or "" for e in items], 256)  # fp32, all six layers
    x, xo = shipped_features(cfg, encoder, tok, bf16, items, openings)
    groups = np.array([e.group for e in items])
    labels, o_labels = [e.response_class or "" for e in items], [e.response_class or "" for e in openings]
    on_xstest = np.isin(groups, XSTEST_MODELS)

    def shipped(tr: np.ndarray, otr: np.ndarray, te: np.ndarray) -> list[str]:
        return predict(fit_head(x, labels, tr, cfg, (xo, o_labels, otr), cfg.opening_weight), x[te])

    def floor(tr: np.ndarray, otr: np.ndarray, te: np.ndarray) -> list[str]:
        tr = tr[on_xstest[tr]]
        clf = LogisticRegression(max_iter=3000).fit(floor_x[tr], [labels[i] for i in tr])
        return [str(p) for p in clf.predict(floor_x[te])]

    def gpt4(tr: np.ndarray, otr: np.ndarray, te: np.ndarray) -> list[str]:
        return [_gpt4(items[i].meta.get("gpt4_judge_label")) for i in te]

    options = {"distilled v3": shipped, "floor: frozen MiniLM + LR": floor, "GPT-4 judge labels": gpt4}
    rows: list[dict[str, Any]] = []
    print(SPLIT_HEADER)
    for split, folds in held_out_splits(items, openings).items():
        for option, fit in options.items():
            pred: dict[int, str] = {}
            for tr, otr, te in folds:
                pred.update(zip(te.tolist(), fit(tr, otr, te), strict=True))
            rows.append(split_row(split, option, pred, labels, groups))
    out["splits"] = rows


def self_trained(head: Any, fit: Any, x_test: np.ndarray, rounds: int, threshold: float) -> list[str]:
    """Predictions after `rounds` of self-training: the test rows the head calls with probability ≥ `threshold`
    join training under their predicted class (`fit(rows, labels)` re-fits the head with them)."""
    for _ in range(rounds):
        p = head.predict_proba(x_test)
        sure = np.flatnonzero(p.max(axis=1) >= threshold)
        head = fit(x_test[sure], [head.classes[k] for k in p[sure].argmax(axis=1)])
    return predict(head, x_test)


def prior_adjusted(head: Any, x_test: np.ndarray, train_prior: np.ndarray, iters: int = 50) -> list[str]:
    """Predictions with the class priors re-estimated on the test rows by EM (Saerens et al., 2002)."""
    p = head.predict_proba(x_test)
    q = train_prior.copy()
    for _ in range(iters):
        adjusted = p * (q / train_prior)
        adjusted /= adjusted.sum(axis=1, keepdims=True)
        q = adjusted.mean(axis=0)
    return [head.classes[k] for k in adjusted.argmax(axis=1)]


def adapt_bench(cfg: DistilledConfig, bf16: bool, out: dict[str, object]) -> None:
    """κ of v3 adapted, without labels, to the held-out replies it grades (as a deployed judge could adapt to
    its model's traffic): self-training on its confident calls, priors re-estimated by EM, and each source's
    features centred on that source's mean."""
    _, items = base_items(cfg)
    openings = opening_sentences(items)
    encoder, tok = load_prompt_encoder()
    x, xo = shipped_features(cfg, encoder, tok, bf16, items, openings)
    groups, o_groups = np.array([e.group for e in items]), np.array([e.group for e in openings])
    labels, o_labels = [e.response_class or "" for e in items], [e.response_class or "" for e in openings]
    centred, o_centred = x.copy(), xo.copy()
    for g in np.unique(groups):
        mean = x[groups == g].mean(axis=0)
        centred[groups == g] -= mean
        o_centred[o_groups == g] -= mean

    def fitter(tr: np.ndarray, otr: np.ndarray) -> Any:
        def fit(x_more: np.ndarray, y_more: list[str]) -> Any:
            w = np.concatenate([np.ones(len(tr)), np.full(len(otr), cfg.opening_weight), np.ones(len(y_more))])
            return train_linear_head(np.vstack([x[tr], xo[otr], x_more]), [labels[i] for i in tr]
                                     + [o_labels[i] for i in otr] + y_more, cfg.response_c, cfg.balanced, w)
        return fit

    def options(tr: np.ndarray, otr: np.ndarray, te: np.ndarray) -> dict[str, list[str]]:
        head = fit_head(x, labels, tr, cfg, (xo, o_labels, otr), cfg.opening_weight)
        prior = np.array([np.mean([labels[i] == c for i in tr]) for c in head.classes])
        got = {"v3": predict(head, x[te]), "EM prior": prior_adjusted(head, x[te], prior),
               "centred per source": predict(fit_head(centred, labels, tr, cfg, (o_centred, o_labels, otr),
                                                      cfg.opening_weight), centred[te])}
        for rounds, threshold in ((1, 0.9), (3, 0.8), (3, 0.9)):
            got[f"self-trained, {rounds} x p ≥ {threshold}"] = self_trained(head, fitter(tr, otr), x[te], rounds,
                                                                            threshold)
        return got

    rows: list[dict[str, Any]] = []
    splits = held_out_splits(items, openings)
    print(SPLIT_HEADER)
    for split in ("two -> the third, each in turn", "all three, held-out prompts"):
        pred: dict[str, dict[int, str]] = {}
        for tr, otr, te in splits[split]:
            for option, calls in options(tr, otr, te).items():
                pred.setdefault(option, {}).update(zip(te.tolist(), calls, strict=True))
        for option, by_row in pred.items():
            rows.append(split_row(split, option, by_row, labels, groups))
    out["adapt"] = rows


IN_DOMAIN_FOLDS = {"medsafetybench": ("medsafetybench",), "seed": ("seed",),
                   "medquad+borderline": ("medquad", "borderline")}


def in_domain_bench(cfg: DistilledConfig, bf16: bool, out: dict[str, object]) -> None:
    """κ on SmolLM2's own labelled replies, holding out whole prompt sources, by in-domain weight.

    Weight 0 is the judge without in-domain data (the first session's judge); the string matcher of
    bench/experiments/heuristic.py is the baseline beside it. The XSTest leave-one-model-out κ of each weight is printed
    too, so a gain at home is not paid for on other models' replies.
    """
    from experiments.heuristic import classify_response

    from careloop.monitor.datasets import load_smollm2

    own = load_smollm2(DATA)
    if not own:
        raise SystemExit("no data/smollm2/labelled.jsonl")
    items = base_items(cfg)[1] + own
    print(f"features for {len(items)} items ({len(own)} SmolLM2 replies, bf16={bf16}) ...", flush=True)
    feats, _ = features(items, cfg, bf16)
    x = np.hstack([feats[p] for p in ("H", "T", "F")])
    labels = np.array([e.response_class or "" for e in items])
    groups = np.array([e.group for e in items])
    is_own = np.array([e.source == "smollm2" for e in items])
    harmful = np.array([(e.harm_level or 0) > 0 for e in items])

    def refused_share(pred: list[str] | np.ndarray, idx: np.ndarray) -> float:
        sel = [p for p, i in zip(pred, idx, strict=True) if harmful[i]]
        return sum(p != "Accept" for p in sel) / max(1, len(sel))

    rows: dict[str, dict[str, object]] = {}
    for weight in (0.0, 1.0, 3.0, 5.0):
        folds: dict[str, float] = {}
        preds: dict[int, str] = {}
        for fold, sources in IN_DOMAIN_FOLDS.items():
            te = np.flatnonzero(is_own & np.isin(groups, sources))
            tr = np.flatnonzero(~is_own | (is_own & ~np.isin(groups, sources))) if weight else np.flatnonzero(~is_own)
            w = np.where(is_own[tr], weight, 1.0)
            head = train_linear_head(x[tr], list(labels[tr]), cfg.response_c, cfg.balanced, w)
            pred = predict(head, x[te])
            folds[fold] = cohen_kappa(list(labels[te]), pred)
            preds.update(zip(te.tolist(), pred, strict=True))
        idx = np.array(sorted(preds))
        pooled = [preds[i] for i in idx]
        xs_folds: dict[str, float] = {}
        for m in XSTEST_MODELS:
            tr = np.flatnonzero(groups != m) if weight else np.flatnonzero((groups != m) & ~is_own)
            te = np.flatnonzero(groups == m)
            head = train_linear_head(x[tr], list(labels[tr]), cfg.response_c, cfg.balanced,
                                     np.where(is_own[tr], weight, 1.0))
            xs_folds[m] = cohen_kappa(list(labels[te]), predict(head, x[te]))
        rows[f"distilled, in-domain weight {weight:g}"] = {
            "folds": folds, "pooled": cohen_kappa(list(labels[idx]), pooled),
            "accuracy": float(np.mean(labels[idx] == np.array(pooled))),
            "harmful_not_accept": refused_share(pooled, idx), "xstest_lomo": xs_folds,
            "xstest_mean": float(np.mean(list(xs_folds.values())))}
    idx = np.flatnonzero(is_own)
    matched = {i: classify_response(items[i].response or "") for i in idx.tolist()}
    pred = [matched[i] for i in idx.tolist()]
    fold_idx = {f: np.flatnonzero(is_own & np.isin(groups, s)).tolist() for f, s in IN_DOMAIN_FOLDS.items()}
    rows["string match (experiments.heuristic)"] = {
        "folds": {f: cohen_kappa(list(labels[ix]), [matched[i] for i in ix]) for f, ix in fold_idx.items()},
        "pooled": cohen_kappa(list(labels[idx]), pred), "accuracy": float(np.mean(labels[idx] == np.array(pred))),
        "harmful_not_accept": refused_share(pred, idx), "xstest_lomo": {}, "xstest_mean": None}
    truth_share = refused_share(labels[idx], idx)
    print(f"\nresponse class on SmolLM2's own replies, κ vs project labels, held-out prompt source "
          f"(labelled harmful-prompt replies not Accept: {truth_share:.1%})")
    print(f"{'option':40s} " + " ".join(f"{f:>18s}" for f in IN_DOMAIN_FOLDS)
          + f" {'pooled':>7s} {'acc':>6s} {'harm≠Acc':>8s} {'XSTest LOMO':>11s}")
    for name, r in rows.items():
        per_source = r["folds"]
        assert isinstance(per_source, dict)
        xm = r["xstest_mean"]
        print(f"{name:40s} " + " ".join(f"{per_source[f]:18.3f}" for f in IN_DOMAIN_FOLDS)
              + f" {r['pooled']:7.3f} {r['accuracy']:6.3f} {r['harmful_not_accept']:8.1%} "
              + ("-" if xm is None else f"{xm:.3f}").rjust(11))
    out["in_domain"] = {"rows": rows, "labelled_harmful_not_accept": truth_share, "n": len(own)}


def cross_encoder_bench(cfg: DistilledConfig, xcfg: CrossEncoderConfig, folds: Sequence[str],
                        out: dict[str, object]) -> None:
    """Leave-one-model-out κ of the cross-encoder as served (int8) and in fp32, beside the logistic head on the
    same fold and the two averaged; training seconds and int8 verdicts/s of each fold."""
    import tempfile

    from experiments.cross_encoder import load_cross_encoder, train_cross_encoder

    _, items = base_items(cfg)
    print(f"frozen features for the logistic head ({len(items)} items) ...", flush=True)
    feats, _ = features(items, cfg, bf16=False)
    x = np.hstack([feats[p] for p in ("H", "T", "F")])
    groups = np.array([e.group for e in items])
    labels = [e.response_class or "" for e in items]
    prompts, responses = [e.prompt for e in items], [e.response or "" for e in items]
    rows: dict[str, dict[str, object]] = {}
    for m in folds:
        tr, te = np.flatnonzero(groups != m).tolist(), np.flatnonzero(groups == m).tolist()
        truth = [labels[i] for i in te]
        t0 = time.perf_counter()
        model = train_cross_encoder([prompts[i] for i in tr], [responses[i] for i in tr], [labels[i] for i in tr],
                                    xcfg)
        train_s = time.perf_counter() - t0
        tp, tr_ = [prompts[i] for i in te], [responses[i] for i in te]
        p32 = model.predict_proba(tp, tr_)
        with tempfile.TemporaryDirectory() as d:
            model.save(Path(d))
            served = load_cross_encoder(Path(d))
            t1 = time.perf_counter()
            p8 = served.predict_proba(tp, tr_)
            rate = len(te) / (time.perf_counter() - t1)
        head = train_linear_head(x[tr], [labels[i] for i in tr], cfg.response_c, cfg.balanced)
        order = [head.classes.index(c) for c in RESPONSE_CLASSES]
        plr = head.predict_proba(x[te])[:, order]

        def kappa(p: np.ndarray, truth: list[str] = truth) -> float:
            return cohen_kappa(truth, [RESPONSE_CLASSES[i] for i in p.argmax(axis=1)])

        rows[m] = {"cross_encoder_int8": kappa(p8), "cross_encoder_fp32": kappa(p32), "logistic_head": kappa(plr),
                   "average_int8_logistic": kappa((p8 + plr) / 2), "train_s": train_s, "int8_verdicts_per_s": rate,
                   "confusion_int8": confusion_matrix(truth, [RESPONSE_CLASSES[i] for i in p8.argmax(axis=1)])}
        print(f"{m}: {json.dumps(rows[m], default=float)}", flush=True)
    keys = ("cross_encoder_int8", "cross_encoder_fp32", "logistic_head", "average_int8_logistic")
    print(f"\nresponse class, κ vs human labels, held-out source model\n{'option':24s} "
          + " ".join(f"{m:>16s}" for m in folds) + f" {'mean':>6s}")
    for k in keys:
        vals = [float(rows[m][k]) for m in folds]  # type: ignore[arg-type]
        print(f"{k:24s} " + " ".join(f"{v:16.3f}" for v in vals) + f" {np.mean(vals):6.3f}")
    out["cross_encoder"] = {"folds": rows, "config": xcfg.__dict__}

BUDGET_HEADS = (32, 48, 64, 80, 96, 128)
BUDGET_LAYERS = (2, 3, 4, 5, 6)
V2_RECIPE = (128, 64, 6, False)  # (head tokens, tail tokens, layers, opening sentences): the judge before v3


def embed_by_layer(encoder: Any, tok: Any, texts: Sequence[str], max_length: int, from_end: bool = False,
                   batch_size: int = 64) -> np.ndarray:
    """Mean-pooled, normalised embeddings after every encoder layer: shape (layers + 1, len(texts), hidden)."""
    import torch

    out = np.zeros((int(encoder.config.num_hidden_layers) + 1, len(texts), int(encoder.config.hidden_size)),
                   dtype=np.float32)
    with torch.inference_mode():
        for idx, enc in length_sorted_batches(tok, texts, max_length, from_end, batch_size):
            for k, h in enumerate(encoder(**enc, output_hidden_states=True).hidden_states):
                out[k, idx] = mean_pool(h, enc["attention_mask"])
    return out


def encoder_rate(encoder: Any, tok: Any, prompts: Sequence[str], responses: Sequence[str], head: int, tail: int,
                 layers: int, prompt_tokens: int, batch_size: int = 32) -> float:
    """Verdicts/s of the encoder passes one configuration needs: the prompt (all layers, for the harm heads),
    the response's opening and, if any, its ending (first `layers` layers)."""
    short = truncated_encoder(encoder, layers)
    embed_texts(encoder, tok, prompts[:batch_size], prompt_tokens)  # warm-up
    t0 = time.perf_counter()
    for s in range(0, len(responses), batch_size):
        embed_texts(encoder, tok, prompts[s:s + batch_size], prompt_tokens, batch_size=batch_size)
        embed_texts(short, tok, responses[s:s + batch_size], head, batch_size=batch_size)
        if tail:
            embed_texts(short, tok, responses[s:s + batch_size], tail, from_end=True, batch_size=batch_size)
    return len(responses) / (time.perf_counter() - t0)


def lomo_kappa(x: np.ndarray, labels: Sequence[str], groups: np.ndarray, cfg: DistilledConfig,
               openings: tuple[np.ndarray, Sequence[str], np.ndarray] | None = None,
               opening_weight: float = 1.0) -> dict[str, float]:
    """κ of a response head on each held-out XSTest source model, trained on every other row (and, if given, the
    opening-sentence rows (features, labels, groups) of the other models at `opening_weight`)."""
    folds = {}
    for m in XSTEST_MODELS:
        tr, te = np.flatnonzero(groups != m), np.flatnonzero(groups == m)
        with_openings = None
        if openings is not None:
            xo, o_labels, o_groups = openings
            with_openings = (xo, o_labels, np.flatnonzero(o_groups != m))
        head = fit_head(x, labels, tr, cfg, with_openings, opening_weight)
        folds[m] = cohen_kappa([labels[i] for i in te], predict(head, x[te]))
    return folds


def fit_head(x: np.ndarray, labels: Sequence[str], rows: np.ndarray, cfg: DistilledConfig,
             openings: tuple[np.ndarray, Sequence[str], np.ndarray] | None = None,
             opening_weight: float = 1.0) -> Any:
    """The response head fitted on `rows` of x, plus, if given, opening-sentence rows (features, labels, which
    rows) at `opening_weight`."""
    xt, yt, wt = x[rows], [labels[i] for i in rows], np.ones(len(rows))
    if openings is not None:
        xo, o_labels, keep = openings
        xt, yt = np.vstack([xt, xo[keep]]), yt + [o_labels[i] for i in keep]
        wt = np.concatenate([wt, np.full(len(keep), opening_weight)])
    return train_linear_head(xt, yt, cfg.response_c, cfg.balanced, wt)


def budget_bench(cfg: DistilledConfig, out: dict[str, object], opening_weight: float = 1.0) -> None:
    """κ (leave-one-model-out) against verdicts/s: opening length × encoder depth, with and without the opening
    sentences in training (at `opening_weight`), beside the v2 recipe (opening + ending after the last layer);
    fp32 features."""
    import copy

    import torch

    _, items = base_items(cfg)
    openings = opening_sentences(items)
    encoder, tok = load_prompt_encoder()
    responses = [e.response or "" for e in items]
    groups = np.array([e.group for e in items])
    labels = [e.response_class or "" for e in items]
    o_groups = np.array([e.group for e in openings])
    o_labels = [e.response_class or "" for e in openings]
    print(f"per-layer features for {len(items)} items and {len(openings)} opening sentences ...", flush=True)
    heads = {h: embed_by_layer(encoder, tok, responses, h) for h in BUDGET_HEADS}
    o_heads = {h: embed_by_layer(encoder, tok, [e.response or "" for e in openings], h) for h in BUDGET_HEADS}
    tail = embed_by_layer(encoder, tok, responses, V2_RECIPE[1], from_end=True)
    cues = np.asarray([hand_features(r) for r in responses], dtype=np.float32)
    o_cues = np.asarray([hand_features(e.response or "") for e in openings], dtype=np.float32)

    def lomo(x: np.ndarray, xo: np.ndarray | None) -> dict[str, float]:
        return lomo_kappa(x, labels, groups, cfg, None if xo is None else (xo, o_labels, o_groups), opening_weight)

    rows: list[dict[str, Any]] = []
    for with_openings in (False, True):
        for h in BUDGET_HEADS:
            for layers in BUDGET_LAYERS:
                x = np.hstack([heads[h][layers], cues])
                folds = lomo(x, np.hstack([o_heads[h][layers], o_cues]) if with_openings else None)
                rows.append({"head": h, "tail": 0, "layers": layers, "openings": with_openings, "folds": folds,
                             "mean": float(np.mean(list(folds.values()))), "cost": h * layers})
                print(f"  openings {with_openings!s:5s} head {h:3d} layers {layers}: κ {rows[-1]['mean']:.3f}",
                      flush=True)
    h, t, layers, _ = V2_RECIPE
    folds = lomo(np.hstack([heads[h][layers], tail[layers], cues]), None)
    v2 = {"head": h, "tail": t, "layers": layers, "openings": False, "folds": folds,
          "mean": float(np.mean(list(folds.values()))), "cost": (h + t) * layers}
    rows.append(v2)
    # Throughput where it decides something: configurations that no cheaper one matches on κ, and the v2 recipe.
    front = [r for r in rows if not any(o["cost"] < r["cost"] and o["mean"] >= r["mean"] for o in rows)]
    if v2 not in front:
        front.append(v2)
    xs = [i for i, e in enumerate(items) if e.group in XSTEST_MODELS]
    sample = xs[:: max(1, len(xs) // 300)]
    rate_p, rate_r = [items[i].prompt for i in sample], [responses[i] for i in sample]
    precisions = {"fp32": encoder}
    if native_bf16():
        precisions["bf16"] = copy.deepcopy(encoder).to(torch.bfloat16)
    print(f"\n{'head':>4s} {'tail':>4s} {'layers':>6s} {'openings':>8s} " + " ".join(f"{m:>16s}" for m in XSTEST_MODELS)
          + f" {'mean':>6s} " + " ".join(f"{p + ' v/s':>9s}" for p in precisions), flush=True)
    for r in sorted(front, key=lambda r: (r["cost"], r["mean"])):
        r["verdicts_per_s"] = {p: encoder_rate(enc, tok, rate_p, rate_r, r["head"], r["tail"], r["layers"],
                                               cfg.prompt_tokens) for p, enc in precisions.items()}
        print(f"{r['head']:4d} {r['tail']:4d} {r['layers']:6d} {r['openings']!s:>8s} "
              + " ".join(f"{r['folds'][m]:16.3f}" for m in XSTEST_MODELS) + f" {r['mean']:6.3f} "
              + " ".join(f"{v:9.1f}" for v in r["verdicts_per_s"].values()), flush=True)
    out["budget"] = rows


def plot_budget(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """κ against fp32 verdicts/s for the measured configurations (a PNG a person can read)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        rates = r.get("verdicts_per_s")
        if not rates:
            continue
        for precision, marker in (("fp32", "o"), ("bf16", "^")):
            if precision in rates:
                colour = "tab:blue" if r["openings"] else "tab:grey"
                ax.scatter(rates[precision], r["mean"], marker=marker, color=colour)
        label = f"{r['head']}" + (f"+{r['tail']}" if r["tail"] else "") + f" tok, L{r['layers']}"
        ax.annotate(label, (rates["fp32"], r["mean"]), fontsize=7, xytext=(4, -3), textcoords="offset points")
    ax.axhline(0.85, ls="--", color="tab:red", lw=1)
    ax.axvline(50, ls=":", color="tab:red", lw=1)
    ax.set_xlabel("encoder verdicts/s on 2 CPU cores (o fp32, ^ bf16)")
    ax.set_ylabel("mean κ, leave-one-source-model-out (XSTest)")
    ax.set_title("distilled judge: κ vs speed (blue: with opening sentences)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def rate_bench(judge: Any, encoder_batches: Sequence[int], worker_batch: int, reps: int,
               out: dict[str, object], items: Sequence[LabelledExample] | None = None) -> list[dict[str, Any]]:
    """Whole-judge verdicts/s (`grade_sync`, in worker batches) for each encoder batch, interleaved `reps` times so
    a busy neighbour slows every option alike; medians, ratios to the first option, and whether verdicts match."""
    import statistics

    from careloop.monitor.judges.base import JudgeInput

    rows_in = list(items if items is not None else load_xstest(DATA))
    inputs = [JudgeInput(e.id, e.messages, e.response or "") for e in rows_in]
    featurizer = judge.loaded.featurizer
    judge.grade_sync(inputs[:worker_batch])  # warm-up, not timed
    rates: dict[int, list[float]] = {b: [] for b in encoder_batches}
    verdicts: dict[int, list[str]] = {}
    for _ in range(reps):
        for b in encoder_batches:
            featurizer.batch_size = b
            t0 = time.perf_counter()
            got = [r.response_class for s in range(0, len(inputs), worker_batch)
                   for r in judge.grade_sync(inputs[s:s + worker_batch])]
            rates[b].append(len(inputs) / (time.perf_counter() - t0))
            verdicts[b] = got
    first = encoder_batches[0]
    base = statistics.median(rates[first])
    print(f"\ndistilled judge on {len(inputs)} XSTest replies, worker batch {worker_batch}, {reps} interleaved runs")
    print(f"{'encoder batch':>13s} {'verdicts/s':>10s} {'× first':>7s} {'same verdicts':>13s}  runs")
    rows: list[dict[str, Any]] = []
    for b in encoder_batches:
        med = statistics.median(rates[b])
        same = sum(x == y for x, y in zip(verdicts[b], verdicts[first], strict=True))
        rows.append({"encoder_batch": b, "worker_batch": worker_batch, "verdicts_per_s": med, "runs": rates[b],
                     "ratio": med / base, "same_verdicts": same, "n": len(inputs)})
        print(f"{b:13d} {med:10.1f} {med / base:7.2f} {same:>6d}/{len(inputs):<6d}  "
              + " ".join(f"{r:.1f}" for r in rates[b]), flush=True)
    out["rate"] = rows
    return rows


async def llm_bench(url: str, model: str, concurrencies: Sequence[int], limit: int, out: dict[str, object],
                    warmup: int = 8) -> list[dict[str, Any]]:
    """The LLM judge on one sample of XSTest (every source model): κ and verdicts/s at each concurrency, after a
    warm-up batch that is not timed (a fresh vLLM compiles and caches on its first requests)."""
    from careloop.monitor.audit import audit
    from careloop.monitor.judges.llm import LLMJudge

    rng = random.Random(0)
    sample = rng.sample(load_xstest(DATA), limit)
    rows: list[dict[str, Any]] = []
    print(f"\nLLM judge {model} at {url}, {limit} XSTest replies per row (warm-up: {warmup}, not timed)")
    print(f"{'concurrency':>11s} {'verdicts/s':>10s} {'κ':>6s} {'accuracy':>8s} {'no verdict':>10s}")
    for concurrency in concurrencies:
        judge = LLMJudge("self", url, model, concurrency=concurrency, max_retries=1)
        try:
            if warmup:
                await audit(judge, sample[:warmup], "warm-up", batch_size=warmup)
            report = await audit(judge, sample, f"xstest sample {limit}", batch_size=concurrency * 4)
        finally:
            await judge.aclose()
        row = {"concurrency": concurrency, **report.to_json()}
        rows.append(row)
        kappa = "-" if report.kappa is None else f"{report.kappa:.3f}"
        accuracy = "-" if report.accuracy is None else f"{report.accuracy:.3f}"
        print(f"{concurrency:11d} {report.verdicts_per_s:10.2f} {kappa:>6s} {accuracy:>8s} {report.failed:10d}",
              flush=True)
    out["llm"] = rows
    return rows


def _rate_judge(artefact: Path | None, bf16: bool) -> Any:
    """The distilled judge to time: the given artefact, or one trained now in a temporary home (about a minute)."""
    import tempfile

    from careloop.core.settings import Settings
    from careloop.monitor.judges.distilled import DistilledJudge
    from careloop.monitor.judges.distilled_artefacts import load_artefact
    from careloop.monitor.judges.distilled_train import ensure_distilled

    if artefact is None:
        artefact = ensure_distilled(Settings(home=Path(tempfile.mkdtemp(prefix="judge-rate-"))))
    return DistilledJudge(load_artefact(artefact, bf16=bf16))


def main() -> None:
    """Run the selected benchmarks and write a JSON summary."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fp32", action="store_true", help="fp32 encoder even where bf16 is fast")
    ap.add_argument("--llm", help="OpenAI-compatible base URL of an LLM judge to measure")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[8],
                    help="--llm: one or more concurrencies, each measured on the same sample")
    ap.add_argument("--limit", type=int, default=150)
    ap.add_argument("--skip-distilled", action="store_true")
    ap.add_argument("--in-domain", action="store_true", help="only the SmolLM2 in-domain benchmark")
    ap.add_argument("--cross-encoder", nargs="*", metavar="FOLD",
                    help="only the cross-encoder benchmark (on these held-out models; default all three)")
    ap.add_argument("--splits", action="store_true",
                    help="only κ per kind of held-out split (1, 2 or 3 models in training), per model and pooled")
    ap.add_argument("--adapt", action="store_true",
                    help="only v3 adapted without labels to the replies it grades (self-training, EM priors)")
    ap.add_argument("--budget", action="store_true",
                    help="only κ against verdicts/s: opening length × encoder depth × opening sentences")
    ap.add_argument("--opening-weight", type=float, default=1.0,
                    help="--budget: weight of the opening-sentence rows (the grid in the README: 1; shipped: 0.25)")
    ap.add_argument("--rate", type=int, nargs="+", metavar="ENCODER_BATCH",
                    help="only whole-judge verdicts/s at these encoder batches (the first is the baseline), with a "
                         "judge trained on all three models unless --artefact")
    ap.add_argument("--artefact", type=Path, help="--rate: a trained distilled-v<N> directory to load")
    ap.add_argument("--worker-batch", type=int, default=64, help="--rate: exchanges per grade (the worker's)")
    ap.add_argument("--reps", type=int, default=5, help="--rate: interleaved runs of each option")
    ap.add_argument("--out", type=Path, default=Path("judge_bench.json"))
    args = ap.parse_args()
    import torch

    torch.set_num_threads(2)
    out: dict[str, object] = {}
    if args.rate:
        rate_bench(_rate_judge(args.artefact, bf16=not args.fp32), args.rate, args.worker_batch, args.reps, out)
    elif args.cross_encoder is not None:
        cross_encoder_bench(DistilledConfig(), CrossEncoderConfig(), args.cross_encoder or XSTEST_MODELS, out)
    elif args.budget:
        budget_bench(DistilledConfig(), out, args.opening_weight)
        plot_budget(out["budget"], args.out.with_suffix(".png"))  # type: ignore[arg-type]
    elif args.adapt:
        adapt_bench(DistilledConfig(), bf16=not args.fp32 and native_bf16(), out=out)
    elif args.splits:
        splits_bench(DistilledConfig(), bf16=not args.fp32 and native_bf16(), out=out)
    elif args.in_domain:
        in_domain_bench(DistilledConfig(), bf16=not args.fp32 and native_bf16(), out=out)
    elif not args.skip_distilled:
        distilled_bench(DistilledConfig(), bf16=not args.fp32 and native_bf16(), out=out)
    if args.llm:
        asyncio.run(llm_bench(args.llm, args.model, args.concurrency, args.limit, out))
    args.out.write_text(json.dumps(out, indent=2, default=float))
    print(f"\nsummary: {args.out}")


if __name__ == "__main__":
    main()
