"""A realignment run's training: datasets from judged traffic + seed mix, KTO→DPO cycles, checkpoint choice by
the Overall Metric, registration of the chosen checkpoint as a candidate. What `careloop retrain` runs first;
`careloop.retrain.rollout` then takes the candidate through its canary.

Crash safety: nothing here touches serving; checkpoints live under the run's folder and only the chosen one is
copied into adapters_dir and registered. However the training ends, the run row records it, the heartbeat stops
and the 'retrain' lease is given back.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from careloop.core import registry, telemetry
from careloop.core.schema import RunStatus, utcnow
from careloop.core.settings import Settings
from careloop.core.store import init_db, live_adapters, make_engine
from careloop.monitor.judges.base import Judge
from careloop.retrain.checkpoints import (
    CycleRecord,
    GainTracker,
    PhaseClock,
    dpo_skip_reason,
    failure_signatures,
    reject_reason,
    select_checkpoint,
)
from careloop.retrain.datasets import (
    DPOPair,
    KTOExample,
    PromptItem,
    TrafficExample,
    build_kto_set,
    normalize_prompt,
    write_jsonl,
)
from careloop.retrain.evaluate import (
    EvalResult,
    check_vllm_matches_peft,
    evaluate_adapter_dir,
    evaluate_model,
    paired_gain,
)
from careloop.retrain.generate import load_adapter, unload_adapter
from careloop.retrain.quality import is_degenerate
from careloop.retrain.run_data import (
    RunData,
    build_dpo_pairs,
    count_levels,
    judged_traffic,
    policy_replies,
    prepare_data,
    reference_dpo_pairs,
    references_of,
    remember_verified,
)
from careloop.retrain.run_record import (
    Heartbeat,
    RunError,
    RunReport,
    begin_run,
    finish_run,
    give_back_lease,
    update_run,
)

log = logging.getLogger("careloop.retrain")

Reporter = Callable[[str], None]
REGISTERED = "registered"  # the training's outcome when it leaves a candidate


def _current_target(engine: Engine, settings: Settings) -> tuple[str, str | None]:
    """(vLLM model name serving stable traffic, stable adapter path or None when the base serves)."""
    stable, _ = live_adapters(engine)
    if stable is None:
        return settings.base_model, None
    return stable.name, stable.path


def run_retrain(settings: Settings, *, run_id: int | None = None, cycles: int | None = None,
                judge: Judge | None = None, report_cb: Reporter | None = None, canary: bool = True,
                max_steps: int | None = None, progress: bool = True) -> RunReport:
    """Train, validate and register a candidate; the run row records how the training ended whatever happens.

    With `canary` (a rollout follows: `careloop.retrain.rollout.roll_out_run`) a registered candidate leaves
    the run rolling_out, otherwise the run ends here. The 'retrain' lease is given back either way.
    """
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
    status, outcome, error = RunStatus.FAILED, "failed", None
    if settings.telemetry.otlp_endpoint and not telemetry.enabled():
        telemetry.configure(settings.telemetry.otlp_endpoint, "careloop-retrain")
    try:
        with Heartbeat(engine, rid, settings.retrain.heartbeat_s):
            outcome = _run(settings, engine, rid, run_dir, report, base_target, stable_path, cycles=cycles,
                           judge=judge, say=say, max_steps=max_steps, progress=progress)
        status = RunStatus.ROLLING_OUT if canary and outcome == REGISTERED else RunStatus.SUCCEEDED
    except BaseException as exc:  # KeyboardInterrupt/SystemExit too: the row and the lease must be cleaned up
        error = f"{type(exc).__name__}: {exc}"
        report.outcome = "failed"
        say(f"run {rid} failed: {error}")
        raise
    finally:
        _unload_policies(settings, report.cycles)
        report.wall_s = round(time.monotonic() - t0, 1)
        report.outcome = "failed" if status == RunStatus.FAILED else outcome
        report.write(run_dir)
        finish_run(engine, rid, status=status, outcome=report.outcome, report=report.as_dict(), error=error,
                   adapter=report.adapter)
        give_back_lease(engine)
        engine.dispose()
        telemetry.record_span("retrain run", started_ns, time.time_ns(), {
            "careloop.run_id": rid, "careloop.outcome": report.outcome, "careloop.adapter": report.adapter,
            "careloop.base_target": base_target}, error=error)
    return report


@dataclass
class CycleInputs:
    """What every cycle of a run shares: its settings, judge, material and baseline."""

    settings: Settings
    rid: int
    run_dir: Path
    judge: Judge
    say: Reporter
    traffic: list[TrafficExample]
    data: RunData
    base_eval: EvalResult
    references: dict[str, str]
    max_steps: int | None
    progress: bool
    earlier: dict[str, str] = field(default_factory=dict)  # harmless prompt → latest verified reply of a policy

    @property
    def train_items(self) -> list[PromptItem]:
        """The seed prompts the policy replies to each cycle."""
        return [*self.data.harmful_pool, *self.data.benign_pool, *self.data.borderline]


def _run(settings: Settings, engine: Engine, rid: int, run_dir: Path, report: RunReport, base_target: str,
         stable_path: str | None, *, cycles: int | None, judge: Judge | None, say: Reporter,
         max_steps: int | None, progress: bool) -> str:
    """The cycles, the checkpoint choice and the registration; returns the training's outcome."""
    rs = settings.retrain
    if judge is None:
        from careloop.monitor.judges import build_judge

        say(f"loading reference judge {settings.monitor.reference_judge!r}")
        judge = build_judge(settings.monitor.reference_judge, settings)
    report.judge = str(getattr(judge, "name", settings.monitor.reference_judge))
    if not settings.base_model_dir.exists():
        raise RunError(f"no base model at {settings.base_model_dir}; run `careloop model prepare`")
    traffic, data = _material(settings, engine, report, run_dir, base_target, say)

    async def baseline() -> EvalResult:
        return await evaluate_model(settings.upstream, base_target, data.validation, judge,
                                    alpha=settings.monitor.alpha, max_tokens=rs.validation_max_tokens,
                                    api_key=settings.upstream_api_key)

    say(f"baseline: evaluating {base_target} on {len(data.validation)} validation prompts")
    base_eval = asyncio.run(baseline())
    report.baseline = base_eval.summary()
    say(f"baseline {base_target}: SS {base_eval.safety_score:.3f} ERR {base_eval.err:.3f} "
        f"F1 {base_eval.f1:.3f} Overall {base_eval.overall:.3f}")
    ctx = CycleInputs(settings, rid, run_dir, judge, say, traffic, data, base_eval,
                      references_of(settings, data.excluded), max_steps, progress)
    n_cycles = cycles or rs.max_cycles
    prev_adapter: Path | None = Path(stable_path) if stable_path else None
    policy_model = base_target
    gains = GainTracker(base_eval.overall, rs.flat_cycles, rs.flat_epsilon)
    for cycle in range(1, n_cycles + 1):
        record = _cycle(ctx, report, cycle, n_cycles, policy_model, prev_adapter)
        if record is None:
            report.stop_reason = "not enough KTO examples"
            break
        if not record.rejected:
            prev_adapter = Path(record.adapter_dir)
            # Unique on the server: another store (a reset home, a shared vLLM) may have its own run {rid}.
            policy_model = record.served_as = f"run{rid}-policy-c{cycle}-{uuid.uuid4().hex[:8]}"
            load_adapter(settings.upstream, policy_model, record.adapter_dir, api_key=settings.upstream_api_key)
        stop = gains.update(record.validation["overall"], record.rejected is not None)
        sig = failure_signatures(record.validation["err"], record.dpo_skipped, gains.flat, rs)
        record.signatures = sig
        say(f"cycle {cycle}: failure signatures: ERR > {rs.err_reject:g}: {'yes' if sig['err_spike'] else 'no'}; "
            f"DPO collapse: {'yes' if sig['dpo_collapse'] else 'no'}; flat cycles: {gains.flat}/{rs.flat_cycles}")
        report.write(run_dir)
        if stop:
            report.stop_reason = f"no gain for {gains.flat} cycles"
            break
    report.stop_reason = report.stop_reason or f"{len(report.cycles)} cycles done"
    return _choose_and_register(settings, engine, rid, report, base_eval, base_target, say)


def _material(settings: Settings, engine: Engine, report: RunReport, run_dir: Path, base_target: str,
              say: Reporter) -> tuple[list[TrafficExample], RunData]:
    """The run's judged traffic and seed split, counted into the report."""
    traffic = judged_traffic(engine, report.judge, base_target, settings.retrain.max_traffic_examples)
    data = prepare_data(settings, traffic)
    traffic = [t for t in traffic if normalize_prompt(t.prompt) not in data.excluded]
    report.data = {"traffic": len(traffic), "validation": len(data.validation),
                   "validation_by_level": count_levels(data.validation), "seed_harmful": len(data.harmful_pool),
                   "seed_benign": len(data.benign_pool), "borderline": len(data.borderline),
                   "excluded_prompts": len(data.excluded),
                   "looping_traffic": sum(is_degenerate(t.completion) for t in traffic)}
    write_jsonl(run_dir / "validation.jsonl", data.validation)
    say(f"data: {len(traffic)} judged exchanges, seed {len(data.harmful_pool)} harmful + "
        f"{len(data.benign_pool)} benign + {len(data.borderline)} borderline, {len(data.validation)} validation")
    return traffic, data


def _cycle_sets(ctx: CycleInputs, report: RunReport, cycle: int, policy_model: str, clock: PhaseClock
                ) -> tuple[list[KTOExample], list[DPOPair], int]:
    """One cycle's KTO set and DPO pairs, and how many pairs it could have had (before the caps)."""
    rs, data = ctx.settings.retrain, ctx.data
    with clock("policy_replies"):
        replies = asyncio.run(policy_replies(ctx.settings, policy_model, ctx.train_items, ctx.judge,
                                             rs.max_completion_tokens))
    earlier = dict(ctx.earlier)  # verified replies of earlier cycles' policies only
    remember_verified(ctx.earlier, ctx.train_items, replies)
    examples, dreport = build_kto_set(ctx.traffic, data.harmful_pool + data.benign_pool,
                                      {k: v[0] for k, v in replies.items()}, excluded=data.excluded,
                                      seed_harmful=len(data.harmful_pool), seed_benign=len(data.benign_pool),
                                      borderline=data.borderline, max_completion_words=rs.max_completion_words,
                                      rng_seed=rs.seed + cycle, policy_scores={k: v[1] for k, v in replies.items()},
                                      earlier=earlier, refusal_contrast=rs.refusal_contrast)
    failures = [t for t in ctx.traffic if t.score < 1.0]
    ctx.say(f"cycle {cycle}: DPO candidates: {len(failures)} traffic failures")
    with clock("dpo_pairs"):
        pairs = asyncio.run(build_dpo_pairs(ctx.settings, ctx.judge, failures, dreport, ctx.references))
    seen = {normalize_prompt(p.prompt) for p in pairs}
    refs = [p for p in reference_dpo_pairs(ctx.train_items, replies, rs.max_completion_words, earlier)
            if normalize_prompt(p.prompt) not in seen]
    available = len(pairs) + len(refs)  # the collapse signature counts what the cycle could pair, not the caps
    pairs = (pairs + refs[: rs.max_seed_dpo_pairs])[: rs.max_dpo_pairs]
    dreport.dpo["total"] = len(pairs)
    cdir = ctx.run_dir / f"cycle-{cycle}"
    write_jsonl(cdir / "kto.jsonl", examples)
    write_jsonl(cdir / "dpo.jsonl", pairs)
    report.data.setdefault("cycles", {})[str(cycle)] = {
        **dreport.as_dict(), "looping_policy_replies": sum(is_degenerate(text) for text, _ in replies.values())}
    return examples, pairs, available


def _cycle(ctx: CycleInputs, report: RunReport, cycle: int, n_cycles: int, policy_model: str,
           prev_adapter: Path | None) -> CycleRecord | None:
    """One KTO→DPO cycle, validated; its record (added to the report), or None without enough KTO examples."""
    from careloop.retrain.train import train_dpo, train_kto

    settings, rs, say, rid = ctx.settings, ctx.settings.retrain, ctx.say, ctx.rid
    tc, clock = time.monotonic(), PhaseClock()
    cdir = ctx.run_dir / f"cycle-{cycle}"
    say(f"cycle {cycle}/{n_cycles}: policy replies on {len(ctx.train_items)} seed prompts ({policy_model})")
    examples, pairs, available = _cycle_sets(ctx, report, cycle, policy_model, clock)
    if len(examples) < 4 or len({e.label for e in examples}) < 2:
        return None
    say(f"cycle {cycle}: KTO on {len(examples)} examples (lr {rs.kto_learning_rate})")
    with clock("kto"):
        kto = train_kto(settings.base_model_dir, examples, cdir / "kto", rs, init_adapter=prev_adapter,
                        log_path=ctx.run_dir / "train_log.jsonl", max_steps=ctx.max_steps, progress=ctx.progress)
    adapter_dir = Path(kto.adapter_dir)
    if report.vllm_peft_check is None:
        with clock("served_check"):
            report.vllm_peft_check = _check_served(settings, settings.base_model_dir, adapter_dir,
                                                   ctx.data.validation, say)
    with clock("validate_kto"):
        ev = _validate(settings, f"run{rid}-c{cycle}-kto", adapter_dir, ctx.data.validation, ctx.judge, say)
    kto_summary = {**ev.summary(), "vs_base": asdict(paired_gain(ev, ctx.base_eval, seed=rs.seed,
                                                                 alpha=settings.monitor.alpha))}
    dpo_info: dict[str, Any] | None = None
    dpo_skipped = dpo_skip_reason(available, len(examples), rs, cycle)
    if dpo_skipped:
        say(f"cycle {cycle}: skip DPO: {dpo_skipped}")
    else:
        say(f"cycle {cycle}: DPO on {len(pairs)} pairs (lr {rs.dpo_learning_rate})")
        with clock("dpo"):
            dpo = train_dpo(settings.base_model_dir, pairs, cdir / "dpo", rs, init_adapter=adapter_dir,
                            log_path=ctx.run_dir / "train_log.jsonl", max_steps=ctx.max_steps,
                            progress=ctx.progress)
        with clock("validate_dpo"):
            dpo_ev = _validate(settings, f"run{rid}-c{cycle}-dpo", Path(dpo.adapter_dir), ctx.data.validation,
                               ctx.judge, say)
        vs_kto = paired_gain(dpo_ev, ev, alpha=settings.monitor.alpha, seed=rs.seed)
        kept = vs_kto.gain >= 0
        dpo_info = {"steps": dpo.steps, "seconds": round(dpo.seconds, 1), "examples": dpo.examples,
                    "vs_kto": asdict(vs_kto), "kept": kept}
        say(f"cycle {cycle}: KTO→DPO vs KTO: Overall {vs_kto.gain:+.3f} (P(better) {vs_kto.p_better:.2f}): "
            + ("keeping DPO" if kept else "keeping the KTO checkpoint"))
        if kept:
            adapter_dir, ev = Path(dpo.adapter_dir), dpo_ev
    rejected = reject_reason(ev.err, ev.degenerate, rs, ctx.base_eval.degenerate)
    vs_base = paired_gain(ev, ctx.base_eval, alpha=settings.monitor.alpha, confidence=rs.register_confidence,
                          seed=rs.seed)
    record = CycleRecord(cycle, {"steps": kto.steps, "seconds": round(kto.seconds, 1), "examples": kto.examples,
                                 "validation": kto_summary},
                         dpo_info, dpo_skipped, {**ev.summary(), "vs_base": asdict(vs_base)}, rejected,
                         str(adapter_dir), round(time.monotonic() - tc, 1), phases=clock.seconds)
    report.cycles.append(record)
    say(f"cycle {cycle}: SS {ev.safety_score:.3f} ERR {ev.err:.3f} F1 {ev.f1:.3f} Overall {ev.overall:.3f}"
        + (f" — rejected: {rejected}" if rejected else ""))
    report.write(ctx.run_dir)
    return record


def _choose_and_register(settings: Settings, engine: Engine, rid: int, report: RunReport, base_eval: EvalResult,
                         base_target: str, say: Reporter) -> str:
    """Pick the checkpoint and register it when it is shown better than the serving model; the outcome."""
    rs = settings.retrain
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
    _register(settings, engine, rid, report, record, base_target, say)
    return REGISTERED


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


def _unload_policies(settings: Settings, cycles: Sequence[CycleRecord]) -> None:
    """Unload the cycles' policy adapters from vLLM (the registered copy is loaded by the gateway)."""
    for c in cycles:
        if c.served_as:
            unload_adapter(settings.upstream, c.served_as, api_key=settings.upstream_api_key, timeout_s=10.0)


def _register(settings: Settings, engine: Engine, rid: int, report: RunReport, record: CycleRecord,
              base_target: str, say: Reporter) -> None:
    """Copy the chosen checkpoint into adapters_dir and register it as a candidate."""
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
    update_run(engine, rid, adapter_name=name)
    say(f"registered {name} (cycle {record.cycle}: Overall {v['overall']:.3f} vs {report.baseline['overall']:.3f})")
