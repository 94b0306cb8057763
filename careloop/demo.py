"""`careloop demo`: replay real prompts through the running loop until a realignment completes, then report."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy.engine import Engine
from sqlmodel import Session, func, select

from careloop.core.schema import (
    FINISHED_RUN_STATES,
    STARTED_RUN_STATES,
    Adapter,
    AdapterEvent,
    AdapterStatus,
    Exchange,
    RetrainRun,
    RunStatus,
    TriggerEvent,
    Verdict,
)
from careloop.core.settings import Settings


@dataclass
class Timeline:
    """When each phase of the demo started, in seconds since the demo began."""

    start: float = field(default_factory=time.monotonic)
    marks: list[tuple[str, float, datetime]] = field(default_factory=list)

    def mark(self, name: str) -> None:
        """Note that a phase starts now."""
        from careloop.core.schema import utcnow

        self.marks.append((name, time.monotonic() - self.start, utcnow()))

    def elapsed(self) -> float:
        """Seconds since the demo began."""
        return time.monotonic() - self.start


def _count(engine: Engine, stmt: Any) -> int:
    with Session(engine) as s:
        return int(s.exec(stmt).one())


def loop_state(engine: Engine) -> dict[str, Any]:
    """What the store says about the loop right now."""
    with Session(engine) as s:
        run = s.exec(select(RetrainRun).order_by(RetrainRun.id.desc())).first()  # type: ignore[union-attr]
        canary = s.exec(select(Adapter).where(Adapter.status == AdapterStatus.CANARY)).first()
        stable = s.exec(select(Adapter).where(Adapter.status == AdapterStatus.STABLE)).first()
        decision = s.exec(select(AdapterEvent).where(AdapterEvent.action.in_(["promote", "rollback"]))  # type: ignore[attr-defined]
                          .order_by(AdapterEvent.id.desc())).first()  # type: ignore[union-attr]
        triggers = s.exec(select(func.count()).select_from(TriggerEvent)
                          .where(TriggerEvent.kind == "retrain_started")).one()
        exchanges = s.exec(select(func.count()).select_from(Exchange)).one()
        verdicts = s.exec(select(func.count()).select_from(Verdict)).one()
    return {"run": run, "canary": canary, "stable": stable, "decision": decision, "triggers": int(triggers),
            "exchanges": int(exchanges), "verdicts": int(verdicts)}


def _run_phase(run: RetrainRun | None) -> str:
    if run is None:
        return "waiting for a trigger"
    progress = (run.report or {}).get("progress", {})
    detail = " ".join(f"{k}={v}" for k, v in progress.items()) if isinstance(progress, dict) else str(progress)
    return f"retrain run {run.id}: {run.status} {detail}".strip()


def demo_settings(settings: Settings) -> Settings:
    """The loop's settings for a demo: judge everything, small windows, the demo's cycle count."""
    d = settings.demo
    settings.sample_rate = d.sample_rate
    settings.canary_sample_rate = 1.0
    settings.monitor.min_samples = d.min_samples
    settings.monitor.window_count = max(d.min_samples, min(settings.monitor.window_count, 2 * d.min_samples))
    settings.retrain.max_cycles = d.cycles
    settings.retrain.torch_threads = d.train_threads
    settings.retrain.canary_min_verdicts = min(settings.retrain.canary_min_verdicts, d.min_samples)
    settings.monitor.auto_retrain = True
    return settings


def run_demo(settings: Settings, console: Console) -> dict[str, Any]:
    """Run the whole loop once on this machine and return the report (also written to the reports dir)."""
    from careloop.core.store import make_engine
    from careloop.heldout_eval import generate_all, judge_replies, targets_met
    from careloop.monitor.judges import build_judge
    from careloop.monitor.judges.distilled_train import ensure_distilled
    from careloop.replay import replay, traffic_mix
    from careloop.retrain.heldout import eval_sample
    from careloop.stack import start_stack

    settings = demo_settings(settings)
    d = settings.demo
    timeline = Timeline()
    settings.ensure_dirs()
    timeline.mark("setup")
    ensure_distilled(settings)
    stack = start_stack(settings, console, with_monitor=True)
    engine = make_engine(settings.database_url or "")
    gateway = stack.gateway_url
    report: dict[str, Any] = {"settings": settings.model_dump(mode="json"), "phases": {}}
    failures: list[str] = []
    try:
        heldout = eval_sample(settings.data_dir, d.eval_harmful, d.eval_benign, d.eval_xstest_safe)

        def measure(label: str, url: str, model: str) -> Any:
            with _bar(console, f"held-out eval ({label}): generating", len(heldout)) as (progress, task):
                replies = asyncio.run(generate_all(url, model, heldout, d.max_tokens,
                                                   d.concurrency, progress=lambda k: progress.advance(task, k)))
            judge = build_judge(settings.monitor.reference_judge, settings)
            try:
                return asyncio.run(judge_replies(judge, heldout, replies, label))
            finally:
                asyncio.run(judge.aclose())

        timeline.mark("before")
        # The base model straight from vLLM (what the gateway serves now), so that held-out prompts never
        # become the live traffic the monitor judges and the trigger acts on.
        before = measure("before", settings.upstream, settings.base_model)

        # Live traffic until the monitor triggers a realignment (prompts that are held out never replay).
        timeline.mark("traffic")
        # XSTest's safe probes replay as live traffic (they measure ERR); training never sees them.
        exclude = _heldout_medical(settings)
        rounds = 0
        with _bar(console, "live traffic until a trigger", None) as (progress, task):
            while loop_state(engine)["triggers"] == 0:
                if timeline.elapsed() > d.timeout_s:
                    raise TimeoutError("no trigger fired within the demo's time limit")
                items = traffic_mix(settings.data_dir, d.traffic, seed=rounds, exclude=exclude)
                stats = asyncio.run(replay(gateway, items, settings.public_model, d.concurrency, d.max_tokens,
                                           stop=lambda: loop_state(engine)["triggers"] > 0, seed=rounds,
                                           on_done=lambda st: progress.update(
                                               task, completed=st.sent,
                                               description=f"live traffic until a trigger · {_window(engine)}")))
                failures += stats.failures
                rounds += 1
        timeline.mark("retrain")
        with _bar(console, "realignment", None) as (progress, task):
            while True:
                state = loop_state(engine)
                run = state["run"]
                progress.update(task, description=f"realignment · {_run_phase(run)}")
                if run is not None and run.status in FINISHED_RUN_STATES:
                    break
                if state["canary"] is not None:
                    break
                if timeline.elapsed() > d.timeout_s:
                    raise TimeoutError("the realignment did not finish within the demo's time limit")
                time.sleep(3)
        state = loop_state(engine)
        if state["canary"] is not None or (state["run"] and state["run"].status in STARTED_RUN_STATES):
            timeline.mark("canary")
            with _bar(console, "canary on live traffic", None) as (progress, task):
                rounds = 0
                while _canary_pending(loop_state(engine)):
                    if timeline.elapsed() > d.timeout_s:  # measure what users get now, and say so
                        report["timeout"] = "the canary did not decide within the demo's time limit"
                        console.print(f"[yellow]{report['timeout']}[/]")
                        break
                    items = traffic_mix(settings.data_dir, d.canary_traffic, seed=100 + rounds, exclude=exclude)
                    stats = asyncio.run(replay(gateway, items, settings.public_model, d.concurrency,
                                               d.max_tokens, seed=100 + rounds,
                                               stop=lambda: loop_state(engine)["decision"] is not None,
                                               on_done=lambda st: progress.update(
                                                   task, completed=st.sent,
                                                   description=f"canary on live traffic · {_window(engine)}")))
                    failures += stats.failures
                    rounds += 1
        # Wait for the run to close its books.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            run = loop_state(engine)["run"]
            if run is None or run.status not in STARTED_RUN_STATES:
                break
            time.sleep(2)
        timeline.mark("after")
        state = loop_state(engine)
        after = measure("after", gateway, settings.public_model)  # what users get now, through the gateway
        timeline.mark("done")
        report.update(_summarise(engine, state, before, after, failures, timeline, targets_met))
        report["seeds"] = {"retrain": settings.retrain.seed, "replay_rounds": list(range(rounds)),
                           "note": "replay round k shuffles with seed k (canary rounds 100 + k); training, LoRA "
                                   "init and data order use retrain.seed; generation is greedy"}
    finally:
        engine.dispose()
        stack.stop()
    ok, reason = demo_result(report)
    report["result"] = {"ok": ok, "reason": reason}
    _write(settings, report, console)
    return report


def demo_result(report: dict[str, Any]) -> tuple[bool, str]:
    """Whether the demo reached its result (an adapter promoted, every request served) and why not, in one line."""
    run = report.get("retrain_run") or {}
    decision = report.get("decision") or {}
    failed = int(report.get("failed_requests") or 0)
    if report.get("timeout"):
        return False, str(report["timeout"])
    if not run:
        return False, "no realignment was triggered"
    if run.get("status") == RunStatus.FAILED:
        error = str((run.get("report") or {}).get("error") or run.get("error") or "see its report")
        return False, f"retrain run {run.get('id')} failed: {error.splitlines()[0][:300]}"
    if run.get("outcome") in ("no_checkpoint", "no_gain"):
        why = (run.get("report") or {}).get("stop_reason") or run["outcome"]
        return False, f"retrain run {run.get('id')} registered no adapter ({run['outcome']}: {why})"
    if not decision:
        return False, f"the canary of {run.get('adapter')} reached no decision"
    if decision.get("action") != "promote":
        return False, f"canary {decision.get('adapter')} {decision.get('action')}: {decision.get('reason', '')}"[:400]
    if failed:
        return False, f"{failed} requests failed during the demo"
    return True, f"promoted {decision.get('adapter')}: {decision.get('reason', '')}"[:400]


def _canary_pending(state: dict[str, Any]) -> bool:
    """Whether a canary is still being analysed (no promote/rollback yet while the run goes on)."""
    run = state["run"]
    return state["decision"] is None and (state["canary"] is not None
                                          or (run is not None and run.status in STARTED_RUN_STATES))


def _heldout_medical(settings: Settings) -> set[str]:
    from careloop.retrain.heldout import heldout_prompts

    return {p.prompt.strip().lower() for p in heldout_prompts(settings.data_dir) if not p.group.startswith("xstest")}


def _window(engine: Engine) -> str:
    """A one-line summary of recent verdicts per adapter."""
    with Session(engine) as s:
        rows = s.exec(select(Verdict).order_by(Verdict.id.desc()).limit(200)).all()  # type: ignore[union-attr]
    by: dict[str, list[float]] = {}
    for v in rows:
        by.setdefault(v.adapter, []).append(v.score)
    parts = [f"{a}: SS {sum(x) / len(x):.2f} (n={len(x)})" for a, x in by.items()]
    return ", ".join(parts) or "no verdicts yet"


class _bar:
    """A progress bar (determinate when total is known) used as a context manager."""

    def __init__(self, console: Console, description: str, total: int | None) -> None:
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=console, transient=False)
        self.total, self.description = total, description

    def __enter__(self) -> tuple[Progress, Any]:
        self.progress.start()
        return self.progress, self.progress.add_task(self.description, total=self.total)

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()


def _summarise(engine: Engine, state: dict[str, Any], before: Any, after: Any, failures: list[str],
               timeline: Timeline, targets: Any) -> dict[str, Any]:
    run: RetrainRun | None = state["run"]
    decision: AdapterEvent | None = state["decision"]
    stable: Adapter | None = state["stable"]
    return {
        "wall_time_s": round(timeline.elapsed(), 1),
        "phases": {name: round(t, 1) for name, t, _ in timeline.marks},
        "phase_times": {name: at.isoformat() for name, _, at in timeline.marks},
        "retrain_run": None if run is None else {"id": run.id, "status": run.status, "outcome": run.outcome,
                                                  "adapter": run.adapter_name, "report": run.report,
                                                  "error": run.error},
        "decision": None if decision is None else {"adapter": decision.adapter, "action": decision.action,
                                                    "figures": decision.figures, "reason": decision.reason},
        "stable_adapter": stable.name if stable else None,
        "exchanges": state["exchanges"], "verdicts": state["verdicts"],
        "failed_requests": len(failures), "failures": failures[:20],
        "before": before.as_dict(), "after": after.as_dict(),
        "targets_after": targets(after), "targets_before": targets(before),
    }


def _write(settings: Settings, report: dict[str, Any], console: Console) -> None:
    """Print the before/after table; write the JSON report and the PNG plot."""
    from careloop.report import plot_demo, print_table

    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = settings.reports_dir
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"demo-{stamp}.json"
    png_path = out / f"demo-{stamp}.png"
    json_path.write_text(json.dumps(report, indent=2, default=str))
    print_table(report, console)
    try:
        plot_demo(settings, report, png_path)
        console.print(f"plot: {png_path}")
    except Exception as exc:  # a plot is a nicety; the report stands without it
        console.print(f"[yellow]no plot:[/] {exc}")
    console.print(f"report: {json_path}")


def register(app: typer.Typer) -> None:
    """Attach the `demo` command."""

    @app.command()
    def demo(
        traffic: Annotated[int | None, typer.Option(help="Prompts replayed per round before the trigger.")] = None,
        cycles: Annotated[int | None, typer.Option(help="Realignment cycles.")] = None,
        port: Annotated[int | None, typer.Option(help="Gateway port.")] = None,
    ) -> None:
        """Replay real prompts through the loop until a realignment completes; print and plot before/after."""
        from careloop.core.settings import load_settings
        from careloop.core.sigterm import exit_on_sigterm

        exit_on_sigterm()
        console = Console(stderr=True)
        settings = load_settings()
        if traffic:
            settings.demo.traffic = traffic
        if cycles:
            settings.demo.cycles = cycles
        if port:
            settings.gateway.port = port
        report = run_demo(settings, console)
        result = report["result"]
        if not result["ok"]:
            console.print(f"[red]careloop demo failed:[/] {result['reason']}")
            raise typer.Exit(1)

