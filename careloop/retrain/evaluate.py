"""Score a served model or adapter on a prompt set: greedy through vLLM, graded by the reference judge."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from careloop.monitor.judges.base import Judge, JudgeInput
from careloop.monitor.scoring import compute_metrics, overall_contributions, safety_score
from careloop.retrain.datasets import PromptItem
from careloop.retrain.generate import chat, generate_many, load_adapter, unload_adapter
from careloop.retrain.quality import is_degenerate
from careloop.retrain.stats import PairedComparison, paired_bootstrap

if TYPE_CHECKING:
    from careloop.retrain.train import TeacherForced


@dataclass
class EvalResult:
    """Figures of one model on one prompt set."""

    model: str
    n: int
    safety_score: float
    err: float
    f1: float
    overall: float
    alpha: float
    per_level: dict[str, dict[str, float]] = field(default_factory=dict)
    per_source: dict[str, dict[str, float]] = field(default_factory=dict)
    degenerate: float = 0.0
    ungraded: int = 0
    seconds: float = 0.0
    samples: list[dict[str, Any]] = field(default_factory=list)
    graded: list[tuple[int, str]] = field(default_factory=list)
    items: list[tuple[int, str | None]] = field(default_factory=list)  # per prompt, in order: (level, class)

    def summary(self) -> dict[str, Any]:
        """JSON-able figures without the per-item lists."""
        out = asdict(self)
        out.pop("graded")
        out.pop("items")
        out["samples"] = self.samples[:12]
        return out


def _rates(rows: Sequence[tuple[int, str, bool]]) -> dict[str, float]:
    n = len(rows)
    if not n:
        return {"n": 0}
    return {"n": n,
            "safety_score": round(sum(safety_score(h, c) for h, c, _ in rows) / n, 4),
            "refused": round(sum(c == "Refuse" for _, c, _ in rows) / n, 4),
            "caution": round(sum(c == "Caution" for _, c, _ in rows) / n, 4),
            "accepted": round(sum(c == "Accept" for _, c, _ in rows) / n, 4),
            "degenerate": round(sum(d for _, _, d in rows) / n, 4)}


async def evaluate_model(upstream: str, model: str, items: Sequence[PromptItem], judge: Judge, *,
                         alpha: float = 0.6, max_tokens: int = 128, concurrency: int = 16,
                         api_key: str | None = None,
                         progress: Callable[[int], None] | None = None) -> EvalResult:
    """Generate greedily with `model` for every prompt and grade the replies with `judge`.

    The harm level is the item's known level (seed and validation data carry one); the judge gives the
    response class.
    """
    t0 = time.monotonic()
    replies = await generate_many(upstream, model, [chat(it.prompt) for it in items], max_tokens=max_tokens,
                                  concurrency=concurrency, api_key=api_key, progress=progress)
    inputs = [JudgeInput(exchange_id=f"eval-{i}", messages=chat(it.prompt), response=r.text)
              for i, (it, r) in enumerate(zip(items, replies, strict=True))]
    results = await judge.grade(inputs)
    graded: list[tuple[int, str]] = []
    by_level: dict[str, list[tuple[int, str, bool]]] = {}
    by_source: dict[str, list[tuple[int, str, bool]]] = {}
    samples: list[dict[str, Any]] = []
    ungraded = 0
    degenerate = 0
    per_item: list[tuple[int, str | None]] = []
    for it, reply, res in zip(items, replies, results, strict=True):
        deg = is_degenerate(reply.text)
        degenerate += deg
        per_item.append((it.harm_level, res.response_class if res is not None else None))
        if res is None:
            ungraded += 1
            continue
        cls = res.response_class
        graded.append((it.harm_level, cls))
        by_level.setdefault(str(it.harm_level), []).append((it.harm_level, cls, deg))
        by_source.setdefault(it.source, []).append((it.harm_level, cls, deg))
        if len(samples) < 40:
            samples.append({"prompt": it.prompt[:200], "harm_level": it.harm_level, "source": it.source,
                            "reply": reply.text[:300], "class": cls, "degenerate": deg})
    m = compute_metrics(graded, alpha)
    return EvalResult(model=model, n=m.n, safety_score=m.safety_score, err=m.err, f1=m.f1, overall=m.overall,
                      alpha=alpha, per_level={k: _rates(v) for k, v in sorted(by_level.items())},
                      per_source={k: _rates(v) for k, v in sorted(by_source.items())},
                      degenerate=degenerate / len(items) if items else 0.0, ungraded=ungraded,
                      seconds=time.monotonic() - t0, samples=samples, graded=graded, items=per_item)


def paired_gain(candidate: EvalResult, base: EvalResult, *, alpha: float = 0.6, confidence: float = 0.9,
                seed: int = 0) -> PairedComparison:
    """Paired bootstrap of the candidate's Overall gain over a reference (the base, or KTO alone) on the prompts
    both had graded."""
    both = [(h, c, b) for (h, c), (_, b) in zip(candidate.items, base.items, strict=True)
            if c is not None and b is not None]
    cand = overall_contributions([(h, c) for h, c, _ in both], alpha)
    ref = overall_contributions([(h, b) for h, _, b in both], alpha)
    return paired_bootstrap(cand, ref, confidence=confidence, seed=seed)


async def evaluate_adapter_dir(upstream: str, adapter_dir: Path, items: Sequence[PromptItem], judge: Judge, *,
                               name: str | None = None, **kwargs: Any) -> EvalResult:
    """Load a checkpoint into vLLM under a fresh unique name, evaluate it, unload it."""
    name = name or f"eval-{adapter_dir.name}-{uuid.uuid4().hex[:8]}"
    api_key = kwargs.get("api_key")
    await asyncio.to_thread(load_adapter, upstream, name, str(adapter_dir), api_key=api_key)
    try:
        return await evaluate_model(upstream, name, items, judge, **kwargs)
    finally:
        await asyncio.to_thread(unload_adapter, upstream, name, api_key=api_key)


def _mean_abs(a: Sequence[float], b: Sequence[float]) -> float:
    diffs = [abs(x - y) for x, y in zip(a, b, strict=True)]
    return sum(diffs) / len(diffs) if diffs else 0.0


def check_vllm_matches_peft(upstream: str, base_model_dir: Path, adapter_dir: Path, prompts: Sequence[str], *,
                            max_tokens: int = 16, abs_tol: float = 0.1, api_key: str | None = None,
                            threads: int | None = None) -> dict[str, Any]:
    """Whether vLLM serves the adapter as PEFT computes it, token by token under teacher forcing.

    PEFT (fp32) writes its greedy continuations; vLLM scores the same tokens in whatever dtype it serves.
    The served log-probabilities must lie within `abs_tol` nats per token of PEFT's with the adapter, or be
    clearly nearer to them than to the base model's — a mismatch means vLLM did not apply the adapter
    (wrong target modules, rank above max_lora_rank, a stale name). Greedy openings are not compared: where
    replies are near-ties, bf16 numerics flip them without the adapter being served wrongly.
    """
    from careloop.retrain.generate import served_logprobs
    from careloop.retrain.train import peft_logprobs

    local = peft_logprobs(base_model_dir, adapter_dir, prompts, max_new_tokens=max_tokens, threads=threads)
    name = f"check-{uuid.uuid4().hex[:10]}"
    load_adapter(upstream, name, str(adapter_dir), api_key=api_key)
    try:
        served = [served_logprobs(upstream, name, t.prompt_ids, t.continuation_ids, api_key=api_key)
                  for t in local]
    finally:
        unload_adapter(upstream, name, api_key=api_key)
    return compare_served(served, local, abs_tol)


def compare_served(served: Sequence[Sequence[float]], local: Sequence[TeacherForced],
                   abs_tol: float = 0.1) -> dict[str, Any]:
    """The check's verdict on served token log-probabilities against PEFT's (see check_vllm_matches_peft)."""
    s = [x for row in served for x in row]
    with_adapter = [x for t in local for x in t.with_adapter]
    base = [x for t in local for x in t.base]
    to_adapter, to_base = _mean_abs(s, with_adapter), _mean_abs(s, base)
    ok = to_adapter <= abs_tol or to_adapter < 0.5 * to_base
    return {"ok": ok, "method": "teacher-forced token log-probabilities", "n": len(local), "tokens": len(s),
            "served_vs_peft": round(to_adapter, 4), "served_vs_base": round(to_base, 4),
            "adapter_effect": round(_mean_abs(with_adapter, base), 4), "abs_tol": abs_tol}
