"""A whole realignment run: datasets from judged traffic + seed mix, KTO→DPO cycles, checkpoint choice by the
Overall Metric, registration, canary, promote or roll back. What `careloop retrain` runs.

Crash safety: nothing here touches serving until an adapter is registered and its canary started through the
registry; checkpoints live under the run's folder and only the chosen one is copied into adapters_dir. On any
exit the run row is marked (succeeded/failed), the heartbeat stops and the 'retrain' lease is released.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from careloop.core.schema import Exchange, RetrainRun, Verdict, utcnow
from careloop.core.settings import Settings
from careloop.core.store import init_db, lease_holder, make_engine, release_lease, session_scope
from careloop.gateway import telemetry
from careloop.monitor.judges.base import Judge, JudgeInput
from careloop.retrain.datasets import (
    BEHAVIOUR,
    DatasetReport,
    DPOPair,
    PromptItem,
    TrafficExample,
    build_kto_set,
    load_borderline_items,
    load_seed_items,
    normalize_prompt,
    stratified_split,
    truncate_words,
    write_jsonl,
)
from careloop.retrain.evaluate import (
    EvalResult,
    check_vllm_matches_peft,
    evaluate_adapter_dir,
    evaluate_model,
    paired_gain,
)
from careloop.retrain.generate import chat, generate_many
from careloop.retrain.heldout import never_train

log = logging.getLogger("careloop.retrain")
RETRAIN_LEASE = "retrain"

Reporter = Callable[[str], None]


class RunError(RuntimeError):
    """A run that cannot go on (bad state, nothing to train on, vLLM serving the adapter wrongly)."""


@dataclass
class CycleRecord:
    """One cycle's training and validation figures."""

    cycle: int
    kto: dict[str, Any]
    dpo: dict[str, Any] | None
    dpo_skipped: str | None
    validation: dict[str, Any]
    rejected: str | None
    adapter_dir: str
    seconds: float
    signatures: dict[str, Any] = field(default_factory=dict)  # the design's three failure signatures
    phases: dict[str, float] = field(default_factory=dict)  # seconds per phase of the cycle


class PhaseClock:
    """Seconds spent in each named phase: `with clock("kto"): ...`."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._name, self._t0 = "", 0.0

    def __call__(self, name: str) -> PhaseClock:
        self._name = name
        return self

    def __enter__(self) -> None:
        self._t0 = time.monotonic()

    def __exit__(self, *exc: object) -> None:
        self.seconds[self._name] = round(self.seconds.get(self._name, 0.0) + time.monotonic() - self._t0, 1)


def failure_signatures(err: float, dpo_skipped: str | None, flat: int, rs: Any) -> dict[str, Any]:
    """The design's failure signatures for one cycle: ERR above err_reject, DPO set collapse, Overall flat."""
    return {"err_spike": err > rs.err_reject, "dpo_collapse": bool(dpo_skipped and "collapse" in dpo_skipped),
            "flat_cycles": flat, "flat_stop": flat >= rs.flat_cycles}


@dataclass
class RunReport:
    """Everything a run did (stored as retrain_run.report and report.json in the run folder)."""

    run_id: int
    started_at: str
    base_target: str
    data: dict[str, Any] = field(default_factory=dict)
    baseline: dict[str, Any] = field(default_factory=dict)
    cycles: list[CycleRecord] = field(default_factory=list)
    chosen_cycle: int | None = None
    selection_by_alpha: dict[str, int | None] = field(default_factory=dict)
    stop_reason: str = ""
    adapter: str | None = None
    canary: dict[str, Any] | None = None
    outcome: str = ""
    wall_s: float = 0.0
    vllm_peft_check: dict[str, Any] | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return asdict(self)


# ---------------------------------------------------------------------------------------------------- traffic
def judged_traffic(engine: Engine, judge: str, target: str, limit: int) -> list[TrafficExample]:
    """The latest judged exchanges served by `target`, graded by `judge` (one per prompt, newest wins)."""
    with Session(engine) as s:
        cols: Any = (Exchange.request_messages, Exchange.response_text, Verdict.harm_level, Verdict.score,
                     Verdict.response_class)
        query: Any = select(*cols).join(Verdict, Verdict.exchange_id == Exchange.id)
        query = query.where(Verdict.judge == judge, Exchange.target == target, Exchange.status == 200)
        rows: list[Any] = list(s.exec(query.order_by(Verdict.id.desc()).limit(limit * 2)).all())  # type: ignore[union-attr]
    out: list[TrafficExample] = []
    seen: set[str] = set()
    for messages, response, harm, score, cls in rows:
        prompt = JudgeInput("", list(messages or []), "").prompt
        key = normalize_prompt(prompt)
        if not prompt or not response or key in seen:
            continue
        seen.add(key)
        out.append(TrafficExample(prompt, response, int(harm), float(score), str(cls)))
        if len(out) >= limit:
            break
    return out


# ---------------------------------------------------------------------------------------------------- helpers
class Heartbeat:
    """Marks the run alive every few seconds from a thread (the launcher fails runs that go quiet)."""

    def __init__(self, engine: Engine, run_id: int, every_s: float) -> None:
        self.engine, self.run_id, self.every_s = engine, run_id, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="retrain-heartbeat", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                with session_scope(self.engine) as s:
                    row = s.get(RetrainRun, self.run_id)
                    if row is not None:
                        row.heartbeat_at = utcnow()
                        s.add(row)
            except Exception as exc:  # a store hiccup must not kill training
                log.warning("heartbeat failed: %s", exc)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _update_run(engine: Engine, run_id: int, **fields: Any) -> None:
    with session_scope(engine) as s:
        row = s.get(RetrainRun, run_id)
        if row is None:
            return
        for k, v in fields.items():
            setattr(row, k, v)
        s.add(row)


def begin_run(engine: Engine, settings: Settings, run_id: int | None, base_target: str) -> int:
    """Mark a recorded run as running (or record a new one started by hand); returns its id."""
    with session_scope(engine) as s:
        if run_id is None:
            row = RetrainRun(status="running", backend="local", started_at=utcnow(), heartbeat_at=utcnow(),
                             handle=str(os.getpid()), base_adapter=base_target)
            s.add(row)
            s.flush()
            return int(row.id)  # type: ignore[arg-type]
        found = s.get(RetrainRun, run_id)
        if found is None:
            raise RunError(f"no retrain run {run_id}")
        if found.status not in ("pending", "requested", "running"):
            raise RunError(f"retrain run {run_id} is {found.status}; only a pending or running run can run")
        found.status, found.heartbeat_at = "running", utcnow()
        found.started_at = found.started_at or utcnow()
        found.base_adapter = found.base_adapter or base_target
        s.add(found)
        return run_id


def finish_run(engine: Engine, run_id: int, *, status: str, outcome: str | None, report: dict[str, Any] | None,
               error: str | None, adapter: str | None, release_lease_too: bool = True) -> None:
    """Mark the run finished and give the 'retrain' lease back."""
    fields: dict[str, Any] = {"status": status, "finished_at": utcnow(), "outcome": outcome}
    if report is not None:
        fields["report"] = report
    if error is not None:
        fields["error"] = error[-4000:]
    if adapter is not None:
        fields["adapter_name"] = adapter
    _update_run(engine, run_id, **fields)
    if release_lease_too:
        holder = lease_holder(engine, RETRAIN_LEASE)
        if holder is not None:
            release_lease(engine, RETRAIN_LEASE, holder)


# ---------------------------------------------------------------------------------------------------- datasets
@dataclass
class RunData:
    """The run's fixed material: validation set, training pool, exclusions."""

    validation: list[PromptItem]
    harmful_pool: list[PromptItem]
    benign_pool: list[PromptItem]
    borderline: list[PromptItem]
    excluded: set[str]


def prepare_data(settings: Settings, traffic: Sequence[TrafficExample]) -> RunData:
    """Split the seed data into validation and training pools; nothing evaluation-only is kept for training."""
    rs = settings.retrain
    excluded = set(never_train(settings.data_dir))
    pool = [it for it in load_seed_items(settings.data_dir) if normalize_prompt(it.prompt) not in excluded]
    train, validation = stratified_split(pool, rs.validation_size)
    excluded |= {normalize_prompt(it.prompt) for it in validation}
    traffic_keys = {normalize_prompt(t.prompt) for t in traffic}
    train = [it for it in train if normalize_prompt(it.prompt) not in traffic_keys]
    import random

    rng = random.Random(rs.seed)
    harmful = [it for it in train if it.harm_level >= 1 and it.reference]
    # The graded seed set's harmless prompts are borderline-but-benign by design: they join the borderline ones.
    benign = [it for it in train if it.harm_level == 0 and not it.source.startswith("seed:")]
    seed_benign = [it for it in train if it.harm_level == 0 and it.source.startswith("seed:")]
    rng.shuffle(harmful)
    rng.shuffle(benign)
    borderline = [it for it in load_borderline_items() if normalize_prompt(it.prompt) not in excluded]
    borderline += seed_benign
    return RunData(validation, harmful[: rs.seed_harmful], benign[: rs.seed_benign],
                   borderline[: rs.seed_borderline], excluded)


async def policy_replies(settings: Settings, model: str, items: Sequence[PromptItem], judge: Judge,
                         max_tokens: int) -> dict[str, tuple[str, float]]:
    """The current policy's greedy replies to `items`, graded: normalized prompt → (reply, score)."""
    from careloop.monitor.scoring import safety_score

    replies = await generate_many(settings.upstream, model, [chat(it.prompt) for it in items],
                                  max_tokens=max_tokens, api_key=settings.upstream_api_key)
    results = await judge.grade([JudgeInput(f"pol-{i}", chat(it.prompt), r.text)
                                 for i, (it, r) in enumerate(zip(items, replies, strict=True))])
    out: dict[str, tuple[str, float]] = {}
    for it, r, res in zip(items, replies, results, strict=True):
        if res is None or not r.text.strip():
            continue
        # A cut reply ends mid-sentence; keep whole sentences so the model is not taught to stop abruptly.
        cut = r.finish_reason == "length"
        text = truncate_words(r.text, max(20, len(r.text.split()) - 1)) if cut else r.text
        out[normalize_prompt(it.prompt)] = (text, safety_score(it.harm_level, res.response_class))
    return out


async def build_dpo_pairs(settings: Settings, judge: Judge, failures: Sequence[TrafficExample],
                          report: DatasetReport, references: dict[str, str] | None = None) -> list[DPOPair]:
    """For replies that scored below 1: generate the behaviour the score table wants and keep verified ones;
    where none verifies, the prompt's known good reply (`references`: normalized prompt → reply) stands in."""
    from careloop.monitor.scoring import safety_score

    rs = settings.retrain
    references = references or {}
    failures = list(failures)[: rs.max_dpo_candidates]
    if not failures:
        return []
    convs = [[{"role": "system", "content": BEHAVIOUR[f.harm_level]}, {"role": "user", "content": f.prompt}]
             for f in failures]
    alts = await generate_many(settings.upstream, settings.base_model, convs, max_tokens=rs.max_completion_tokens,
                               api_key=settings.upstream_api_key)
    results = await judge.grade([JudgeInput(f"dpo-{i}", chat(f.prompt), a.text)
                                 for i, (f, a) in enumerate(zip(failures, alts, strict=True))])
    pairs: list[DPOPair] = []
    report.dpo_candidates += len(failures)
    for f, alt, res in zip(failures, alts, results, strict=True):
        ok = res is not None and alt.text.strip() and safety_score(f.harm_level, res.response_class) >= 1.0
        chosen, source = (alt.text, "traffic") if ok else (references.get(normalize_prompt(f.prompt)), "reference")
        if not ok:
            report.dpo_failed_verification += 1
        if not chosen:
            continue
        chosen = truncate_words(chosen, rs.max_completion_words)
        rejected = truncate_words(f.completion, rs.max_completion_words)
        if normalize_prompt(chosen) == normalize_prompt(rejected):
            continue
        pairs.append(DPOPair(f.prompt, chosen, rejected, source, f.harm_level))
        report.dpo[f"h{f.harm_level}"] = report.dpo.get(f"h{f.harm_level}", 0) + 1
    report.dpo["total"] = len(pairs)
    return pairs


def reference_dpo_pairs(items: Sequence[PromptItem], replies: dict[str, tuple[str, float]],
                        max_words: int) -> list[DPOPair]:
    """Prompt-tied pairs from the seed pools: the known good reply (MedSafetyBench's safe reply, MedQuAD's answer,
    the seed set's graded reply) over the policy's own reply where that reply failed (score below 1)."""
    pairs = []
    for it in items:
        got = replies.get(normalize_prompt(it.prompt))
        if got and got[1] < 1.0 and it.reference:
            chosen, rejected = truncate_words(it.reference, max_words), truncate_words(got[0], max_words)
            if normalize_prompt(chosen) != normalize_prompt(rejected):
                pairs.append(DPOPair(it.prompt, chosen, rejected, it.source, it.harm_level))
    return pairs


def references_of(settings: Settings, excluded: set[str]) -> dict[str, str]:
    """Known good replies of every seed prompt that may be trained on: normalized prompt → reply."""
    return {normalize_prompt(it.prompt): it.reference for it in load_seed_items(settings.data_dir)
            if it.reference and normalize_prompt(it.prompt) not in excluded}


# ---------------------------------------------------------------------------------------------------- the run
def dpo_skip_reason(n_pairs: int, n_kto: int, rs: Any, cycle: int = 2) -> str | None:
    """Why DPO is skipped this cycle, or None.

    Cycle 1 runs DPO whenever it has `dpo_min_pairs` pairs; from cycle 2 on, a DPO set under `dpo_min_ratio`
    of the KTO set is the paper's "DPO dataset collapse" signature and ends DPO.
    """
    if not rs.dpo_enabled:
        return "DPO disabled (retrain.dpo_enabled = false)"
    if n_pairs < max(1, rs.dpo_min_pairs):
        return f"DPO set {n_pairs} < {rs.dpo_min_pairs} pairs"
    if cycle > 1 and n_pairs < rs.dpo_min_ratio * n_kto:
        return f"DPO dataset collapse: {n_pairs} pairs < {rs.dpo_min_ratio:.0%} of KTO set {n_kto}"
    return None


def reject_reason(err: float, degenerate: float, rs: Any, base_degenerate: float = 0.0) -> str | None:
    """Why a checkpoint is rejected (validation ERR above err_reject; looping more than allowed), or None.

    Looping is judged against the base: a checkpoint may loop up to `max_degenerate`, or up to
    `max_degenerate_increase` above the base model where the base itself already loops more than that.
    """
    if err > rs.err_reject:
        return f"validation ERR {err:.2f} > {rs.err_reject}"
    limit = max(rs.max_degenerate, base_degenerate + rs.max_degenerate_increase)
    if degenerate > limit:
        return f"{degenerate:.0%} degenerate replies > {limit:.0%} (base {base_degenerate:.0%})"
    return None


@dataclass
class GainTracker:
    """Stops a run after `flat_cycles` cycles in a row without an Overall gain above `epsilon`."""

    best: float
    flat_cycles: int
    epsilon: float
    flat: int = 0

    def update(self, overall: float, rejected: bool) -> bool:
        """Count a cycle in; True when the run should stop."""
        if not rejected and overall > self.best + self.epsilon:
            self.best, self.flat = overall, 0
        else:
            self.flat += 1
        return self.flat >= self.flat_cycles


def select_checkpoint(cycles: Sequence[CycleRecord], alpha: float) -> int | None:
    """The cycle whose validation Overall Metric (under `alpha`) is best among those not rejected."""
    best: tuple[float, int] | None = None
    for c in cycles:
        if c.rejected:
            continue
        v = c.validation
        overall = alpha * v["safety_score"] + (1 - alpha) * (1 - v["err"])
        if best is None or overall > best[0] + 1e-12:
            best = (overall, c.cycle)
    return best[1] if best else None


def _eval_dict(res: EvalResult) -> dict[str, Any]:
    return res.summary()


def _current_target(engine: Engine, settings: Settings) -> tuple[str, str | None]:
    """(vLLM model name serving stable traffic, stable adapter path or None when the base serves)."""
    from careloop.core.store import live_adapters

    stable, _ = live_adapters(engine)
    if stable is None:
        return settings.base_model, None
    return stable.name, stable.path


def run_retrain(settings: Settings, *, run_id: int | None = None, cycles: int | None = None,
                judge: Judge | None = None, report_cb: Reporter | None = None, canary: bool = True,
                max_steps: int | None = None, progress: bool = True) -> RunReport:
    """Run one realignment end to end; the run row records how it ended whatever happens."""
    settings.ensure_dirs()
    engine = make_engine(settings.database_url or "")
    init_db(engine)
    say = report_cb or (lambda msg: log.info("%s", msg))
    base_target, stable_path = _current_target(engine, settings)
    rid = begin_run(engine, settings, run_id, base_target)
    run_dir = settings.runs_dir / f"run-{rid}"
    run_dir.mkdir(parents=True, exist_ok=True)
    report = RunReport(run_id=rid, started_at=utcnow().isoformat(), base_target=base_target,
                       settings=settings.retrain.model_dump())
    t0 = time.monotonic()
    started_ns = time.time_ns()
    status, outcome, error = "failed", "failed", None
    if settings.telemetry.otlp_endpoint and not telemetry.enabled():
        telemetry.configure(settings.telemetry.otlp_endpoint, "careloop-retrain")
    try:
        with Heartbeat(engine, rid, settings.retrain.heartbeat_s):
            outcome = _run(settings, engine, rid, run_dir, report, base_target, stable_path, cycles=cycles,
                           judge=judge, say=say, canary=canary, max_steps=max_steps, progress=progress)
        status = "succeeded"
    except BaseException as exc:  # KeyboardInterrupt/SystemExit too: the row and the lease must be cleaned up
        error = f"{type(exc).__name__}: {exc}"
        report.outcome = "failed"
        say(f"run {rid} failed: {error}")
        raise
    finally:
        _unload_policies(settings, rid, report.cycles)
        report.wall_s = round(time.monotonic() - t0, 1)
        report.outcome = outcome if status == "succeeded" else "failed"
        (run_dir / "report.json").write_text(json.dumps(report.as_dict(), indent=2, default=str))
        finish_run(engine, rid, status=status, outcome=report.outcome, report=report.as_dict(), error=error,
                   adapter=report.adapter)
        engine.dispose()
        telemetry.record_span("retrain run", started_ns, time.time_ns(), {
            "careloop.run_id": rid, "careloop.outcome": report.outcome, "careloop.adapter": report.adapter,
            "careloop.base_target": base_target}, error=error)
    return report


def _run(settings: Settings, engine: Engine, rid: int, run_dir: Path, report: RunReport, base_target: str,
         stable_path: str | None, *, cycles: int | None, judge: Judge | None, say: Reporter, canary: bool,
         max_steps: int | None, progress: bool) -> str:
    rs = settings.retrain
    if judge is None:
        from careloop.monitor.judges import build_judge

        say(f"loading reference judge {settings.monitor.reference_judge!r}")
        judge = build_judge(settings.monitor.reference_judge, settings)
    judge_name = str(getattr(judge, "name", settings.monitor.reference_judge))
    base_model_dir = settings.base_model_dir
    if not base_model_dir.exists():
        raise RunError(f"no base model at {base_model_dir}; run `careloop model prepare`")

    # Data.
    traffic = judged_traffic(engine, judge_name, base_target, rs.max_traffic_examples)
    data = prepare_data(settings, traffic)
    traffic = [t for t in traffic if normalize_prompt(t.prompt) not in data.excluded]
    report.data = {"traffic": len(traffic), "validation": len(data.validation),
                   "validation_by_level": _count_levels(data.validation), "seed_harmful": len(data.harmful_pool),
                   "seed_benign": len(data.benign_pool), "borderline": len(data.borderline),
                   "excluded_prompts": len(data.excluded)}
    write_jsonl(run_dir / "validation.jsonl", data.validation)
    say(f"data: {len(traffic)} judged exchanges, seed {len(data.harmful_pool)} harmful + "
        f"{len(data.benign_pool)} benign + {len(data.borderline)} borderline, {len(data.validation)} validation")

    async def baseline() -> EvalResult:
        return await evaluate_model(settings.upstream, base_target, data.validation, judge,
                                    alpha=settings.monitor.alpha, max_tokens=rs.validation_max_tokens,
                                    api_key=settings.upstream_api_key)

    say(f"baseline: evaluating {base_target} on {len(data.validation)} validation prompts")
    base_eval = asyncio.run(baseline())
    report.baseline = _eval_dict(base_eval)
    say(f"baseline {base_target}: SS {base_eval.safety_score:.3f} ERR {base_eval.err:.3f} "
        f"F1 {base_eval.f1:.3f} Overall {base_eval.overall:.3f}")

    n_cycles = cycles or rs.max_cycles
    prev_adapter: Path | None = Path(stable_path) if stable_path else None
    policy_model = base_target
    gains = GainTracker(base_eval.overall, rs.flat_cycles, rs.flat_epsilon)
    train_items = [*data.harmful_pool, *data.benign_pool, *data.borderline]
    references = references_of(settings, data.excluded)
    for cycle in range(1, n_cycles + 1):
        tc, clock = time.monotonic(), PhaseClock()
        cdir = run_dir / f"cycle-{cycle}"
        say(f"cycle {cycle}/{n_cycles}: policy replies on {len(train_items)} seed prompts ({policy_model})")
        with clock("policy_replies"):
            replies = asyncio.run(policy_replies(settings, policy_model, train_items, judge,
                                                 rs.max_completion_tokens))
        examples, dreport = build_kto_set(traffic, data.harmful_pool + data.benign_pool,
                                          {k: v[0] for k, v in replies.items()}, excluded=data.excluded,
                                          seed_harmful=len(data.harmful_pool), seed_benign=len(data.benign_pool),
                                          borderline=data.borderline, max_completion_words=rs.max_completion_words,
                                          rng_seed=rs.seed + cycle, policy_scores={k: v[1] for k, v in replies.items()})
        failures = [t for t in traffic if t.score < 1.0]
        say(f"cycle {cycle}: DPO candidates: {len(failures)} traffic failures")
        with clock("dpo_pairs"):
            pairs = asyncio.run(build_dpo_pairs(settings, judge, failures, dreport, references))
        seen = {normalize_prompt(p.prompt) for p in pairs}
        refs = [p for p in reference_dpo_pairs(train_items, replies, rs.max_completion_words)
                if normalize_prompt(p.prompt) not in seen]
        available = len(pairs) + len(refs)  # the collapse signature counts what the cycle could pair, not the caps
        pairs = (pairs + refs[: rs.max_seed_dpo_pairs])[: rs.max_dpo_pairs]
        dreport.dpo["total"] = len(pairs)
        write_jsonl(cdir / "kto.jsonl", examples)
        write_jsonl(cdir / "dpo.jsonl", pairs)
        report.data.setdefault("cycles", {})[str(cycle)] = dreport.as_dict()
        if len(examples) < 4 or len({e.label for e in examples}) < 2:
            report.stop_reason = "not enough KTO examples"
            break
        from careloop.retrain.train import train_dpo, train_kto

        say(f"cycle {cycle}: KTO on {len(examples)} examples (lr {rs.kto_learning_rate})")
        with clock("kto"):
            kto = train_kto(base_model_dir, examples, cdir / "kto", rs, init_adapter=prev_adapter,
                            log_path=run_dir / "train_log.jsonl", max_steps=max_steps, progress=progress)
        adapter_dir = Path(kto.adapter_dir)
        if report.vllm_peft_check is None:
            with clock("served_check"):
                report.vllm_peft_check = _check_served(settings, base_model_dir, adapter_dir, data.validation, say)
        with clock("validate_kto"):
            ev = _validate(settings, f"run{rid}-c{cycle}-kto", adapter_dir, data.validation, judge, say)
        kto_summary = {**_eval_dict(ev), "vs_base": asdict(paired_gain(ev, base_eval, seed=rs.seed,
                                                                           alpha=settings.monitor.alpha))}
        dpo_info: dict[str, Any] | None = None
        dpo_skipped = dpo_skip_reason(available, len(examples), rs, cycle)
        if dpo_skipped:
            say(f"cycle {cycle}: skip DPO: {dpo_skipped}")
        else:
            say(f"cycle {cycle}: DPO on {len(pairs)} pairs (lr {rs.dpo_learning_rate})")
            with clock("dpo"):
                dpo = train_dpo(base_model_dir, pairs, cdir / "dpo", rs, init_adapter=adapter_dir,
                                log_path=run_dir / "train_log.jsonl", max_steps=max_steps, progress=progress)
            with clock("validate_dpo"):
                dpo_ev = _validate(settings, f"run{rid}-c{cycle}-dpo", Path(dpo.adapter_dir), data.validation,
                                   judge, say)
            vs_kto = paired_gain(dpo_ev, ev, alpha=settings.monitor.alpha, seed=rs.seed)
            kept = vs_kto.gain >= 0
            dpo_info = {"steps": dpo.steps, "seconds": round(dpo.seconds, 1), "examples": dpo.examples,
                        "vs_kto": asdict(vs_kto), "kept": kept}
            say(f"cycle {cycle}: KTO→DPO vs KTO: Overall {vs_kto.gain:+.3f} (P(better) {vs_kto.p_better:.2f}): "
                + ("keeping DPO" if kept else "keeping the KTO checkpoint"))
            if kept:
                adapter_dir, ev = Path(dpo.adapter_dir), dpo_ev
        rejected = reject_reason(ev.err, ev.degenerate, rs, base_eval.degenerate)
        vs_base = paired_gain(ev, base_eval, alpha=settings.monitor.alpha, confidence=rs.register_confidence,
                                  seed=rs.seed)
        report.cycles.append(CycleRecord(cycle, {"steps": kto.steps, "seconds": round(kto.seconds, 1),
                                                 "examples": kto.examples, "validation": kto_summary},
                                         dpo_info, dpo_skipped,
                                         {**_eval_dict(ev), "vs_base": asdict(vs_base)}, rejected,
                                         str(adapter_dir), round(time.monotonic() - tc, 1)))
        say(f"cycle {cycle}: SS {ev.safety_score:.3f} ERR {ev.err:.3f} F1 {ev.f1:.3f} Overall {ev.overall:.3f}"
            + (f" — rejected: {rejected}" if rejected else ""))
        _write_partial(run_dir, report)
        if not rejected:
            prev_adapter = adapter_dir
            policy_model = f"run{rid}-policy-c{cycle}"
            from careloop.retrain.generate import load_adapter

            load_adapter(settings.upstream, policy_model, str(adapter_dir), api_key=settings.upstream_api_key)
        stop = gains.update(ev.overall, rejected is not None)
        sig = failure_signatures(ev.err, dpo_skipped, gains.flat, rs)
        report.cycles[-1].signatures, report.cycles[-1].phases = sig, clock.seconds
        say(f"cycle {cycle}: failure signatures: ERR > {rs.err_reject:g}: {'yes' if sig['err_spike'] else 'no'}; "
            f"DPO collapse: {'yes' if sig['dpo_collapse'] else 'no'}; flat cycles: {gains.flat}/{rs.flat_cycles}")
        _write_partial(run_dir, report)
        if stop:
            report.stop_reason = f"no gain for {gains.flat} cycles"
            break
    report.stop_reason = report.stop_reason or f"{len(report.cycles)} cycles done"
    for a in rs.alphas_report:
        report.selection_by_alpha[str(a)] = select_checkpoint(report.cycles, a)
    chosen = select_checkpoint(report.cycles, settings.monitor.alpha)
    report.chosen_cycle = chosen
    if chosen is None:
        say("no acceptable checkpoint: nothing registered")
        return "no_checkpoint"
    record = report.cycles[chosen - 1]
    vs = record.validation["vs_base"]
    if record.validation["overall"] <= base_eval.overall + rs.flat_epsilon or vs["p_better"] < rs.register_confidence:
        report.stop_reason += (f"; cycle {chosen} not shown better than {base_target}: Overall gain "
                               f"{vs['gain']:+.3f}, P(better) {vs['p_better']:.2f} < {rs.register_confidence}")
        say(f"best checkpoint (cycle {chosen}) is not shown better than {base_target} "
            f"(P(better) {vs['p_better']:.2f}): nothing registered")
        return "no_gain"
    return _register_and_canary(settings, engine, rid, report, record, base_target, judge_name, say, canary)


def _validate(settings: Settings, name: str, adapter_dir: Path, items: Sequence[PromptItem], judge: Judge,
              say: Reporter) -> EvalResult:
    """A checkpoint's figures on the validation prompts, through vLLM as it will be served."""
    say(f"{name}: evaluating on {len(items)} validation prompts")
    return asyncio.run(evaluate_adapter_dir(settings.upstream, adapter_dir, items, judge,
                                            name=f"{name}-{int(time.time())}", alpha=settings.monitor.alpha,
                                            max_tokens=settings.retrain.validation_max_tokens,
                                            api_key=settings.upstream_api_key))


def _check_served(settings: Settings, base_model_dir: Path, adapter_dir: Path, validation: Sequence[PromptItem],
                  say: Reporter) -> dict[str, Any]:
    """The vLLM-vs-PEFT check on a cycle's checkpoint; a mismatch ends the run (evaluations would be void)."""
    check = check_vllm_matches_peft(settings.upstream, base_model_dir, adapter_dir,
                                    [it.prompt for it in validation[:4]], api_key=settings.upstream_api_key,
                                    threads=settings.retrain.torch_threads or None)
    say(f"vLLM vs PEFT, teacher-forced: {check['served_vs_peft']:.3f} nats/token from PEFT, "
        f"{check['served_vs_base']:.3f} from the base (adapter effect {check['adapter_effect']:.3f})")
    if not check["ok"]:
        raise RunError(f"vLLM does not serve the adapter as PEFT computes it: {check}")
    return check


def _count_levels(items: Sequence[PromptItem]) -> dict[str, int]:
    out: dict[str, int] = {}
    for it in items:
        out[str(it.harm_level)] = out.get(str(it.harm_level), 0) + 1
    return out


def _write_partial(run_dir: Path, report: RunReport) -> None:
    (run_dir / "report.json").write_text(json.dumps(report.as_dict(), indent=2, default=str))


def _unload_policies(settings: Settings, rid: int, cycles: Sequence[CycleRecord]) -> None:
    """Unload the cycles' policy adapters from vLLM (the registered copy is loaded by the gateway)."""
    from careloop.retrain.generate import unload_adapter

    for c in cycles:
        if not c.rejected:
            unload_adapter(settings.upstream, f"run{rid}-policy-c{c.cycle}", api_key=settings.upstream_api_key,
                           timeout_s=10.0)


def _register_and_canary(settings: Settings, engine: Engine, rid: int, report: RunReport, record: CycleRecord,
                         base_target: str, judge_name: str, say: Reporter, canary: bool) -> str:
    from careloop.core import registry

    name, version = registry.next_adapter_name(engine, settings.base_model)
    dest = settings.adapters_dir / name
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(record.adapter_dir, dest)
    v = record.validation
    metrics = {"safety_score": v["safety_score"], "err": v["err"], "f1": v["f1"], "overall": v["overall"],
               "cycle": record.cycle, "baseline": {k: report.baseline[k] for k in
                                                   ("safety_score", "err", "f1", "overall")}}
    registry.register_adapter(engine, name, str(dest), settings.base_model, version,
                              parent=None if base_target == settings.base_model else base_target, run_id=rid,
                              data_counts=report.data, metrics=metrics)
    report.adapter = name
    _update_run(engine, rid, adapter_name=name)
    say(f"registered {name} (cycle {record.cycle}: Overall {v['overall']:.3f} vs {report.baseline['overall']:.3f})")
    if not canary:
        return "registered"
    from careloop.retrain.canary import run_canary

    say(f"canary: {name} at {sorted(settings.retrain.canary_steps)} of users, judged by {judge_name}")
    result = run_canary(engine, settings, name, judge_name,
                        on_tick=lambda d: say(f"canary {name}: {d.action}: {d.reason}"))
    report.canary = asdict(result)
    say(f"canary {name}: {result.outcome}: {result.reason}")
    return result.outcome
