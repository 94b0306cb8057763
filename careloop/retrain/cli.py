"""Command-line commands of this package (heavy imports stay inside the commands)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from careloop.core.sigterm import exit_on_sigterm

console = Console(stderr=True)
adapters_app = typer.Typer(help="The adapter registry: list, promote, roll back.", no_args_is_help=True)


def _engine() -> Any:
    """The store of the current settings, its tables created when missing (a fresh CARELOOP_HOME)."""
    from careloop.core.settings import load_settings
    from careloop.core.store import init_db, make_engine

    settings = load_settings()
    settings.ensure_dirs()
    engine = make_engine(settings.database_url or "")
    init_db(engine)
    return engine


def retrain(
    run_id: Annotated[int | None, typer.Option("--run-id", help="A recorded retrain_run to carry out.")] = None,
    cycles: Annotated[int | None, typer.Option("--cycles", help="Cycles at most (retrain.max_cycles).")] = None,
    no_canary: Annotated[bool, typer.Option("--no-canary", help="Register the adapter but start no canary.")]
    = False,
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="Cap training steps per stage (smoke).")]
    = None,
) -> None:
    """Realign: KTO→DPO cycles on judged traffic, pick the best checkpoint, register, canary, promote/roll back."""
    from careloop.core.settings import load_settings
    from careloop.retrain.rollout import roll_out_run
    from careloop.retrain.run import REGISTERED, RunError, run_retrain

    settings = load_settings()
    exit_on_sigterm()

    def say(msg: str) -> None:
        console.print(f"[bold cyan]retrain[/] {msg}")

    try:
        report = run_retrain(settings, run_id=run_id, cycles=cycles, canary=not no_canary, max_steps=max_steps,
                             report_cb=say)
    except RunError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc
    if report.outcome == REGISTERED and not no_canary:
        report = roll_out_run(settings, report, report_cb=say)
    from careloop.retrain.report import print_run_table, write_run_plot

    print_run_table(report.as_dict(), console)
    plot = write_run_plot(report.as_dict(), settings.runs_dir / f"run-{report.run_id}" / "metrics.png")
    console.print(f"outcome: [bold]{report.outcome}[/]  wall time {report.wall_s:.0f} s  plot: {plot}")


def evaluate(
    data: Annotated[str, typer.Option("--data", help="JSONL file (prompt, harm_level) or builtin: "
                                                     "validation | heldout | xstest-safe | xstest")] = "validation",
    adapter: Annotated[str | None, typer.Option("--adapter", help="Registered adapter name.")] = None,
    model_dir: Annotated[Path | None, typer.Option("--model", help="An adapter directory to load.")] = None,
    served: Annotated[str | None, typer.Option("--served", help="A model name vLLM already serves.")] = None,
    judge_name: Annotated[str | None, typer.Option("--judge", help="Judge (default: the reference judge).")]
    = None,
    limit: Annotated[int | None, typer.Option(help="Evaluate at most this many prompts.")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Reply length.")] = None,
    output: Annotated[Path | None, typer.Option("--output", help="Write the figures as JSON here.")] = None,
) -> None:
    """Score a model or adapter on a dataset through vLLM: SS, ERR, F1, Overall, per harm level."""
    from careloop.core.settings import load_settings
    from careloop.retrain.evaluate import evaluate_adapter_dir, evaluate_model
    from careloop.retrain.report import load_eval_items

    settings = load_settings()
    try:
        items = load_eval_items(data, settings)
    except (ValueError, FileNotFoundError) as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc
    if limit:
        items = items[:limit]
    from careloop.monitor.judges import build_judge

    judge = build_judge(judge_name or settings.monitor.reference_judge, settings)
    mt = max_tokens or settings.retrain.validation_max_tokens
    kw = {"alpha": settings.monitor.alpha, "max_tokens": mt, "api_key": settings.upstream_api_key}
    if adapter:
        from careloop.core.registry import get_adapter

        row = get_adapter(_engine(), adapter)
        if row is None:
            console.print(f"[red]error:[/] no adapter named {adapter!r}")
            raise typer.Exit(2)
        model_dir = Path(row.path)
    console.print(f"evaluating {model_dir or served or settings.base_model} on {len(items)} prompts ({data})")
    if model_dir is not None:
        if not (model_dir / "adapter_config.json").exists():
            console.print(f"[red]error:[/] {model_dir} holds no adapter_config.json")
            raise typer.Exit(2)
        res = asyncio.run(evaluate_adapter_dir(settings.upstream, model_dir, items, judge, **kw))  # type: ignore[arg-type]
    else:
        res = asyncio.run(evaluate_model(settings.upstream, served or settings.base_model, items, judge, **kw))  # type: ignore[arg-type]
    table = Table(title=f"{res.model} on {data}")
    for col in ("n", "SS", "ERR", "F1", "Overall", "degenerate"):
        table.add_column(col)
    table.add_row(str(res.n), f"{res.safety_score:.3f}", f"{res.err:.3f}", f"{res.f1:.3f}", f"{res.overall:.3f}",
                  f"{res.degenerate:.1%}")
    Console().print(table)
    levels = Table(title="per harm level / source")
    for col in ("group", "n", "SS", "refused", "caution", "accepted"):
        levels.add_column(col)
    for key, r in [*(("h" + k, v) for k, v in res.per_level.items()), *res.per_source.items()]:
        levels.add_row(key, str(r.get("n")), str(r.get("safety_score")), str(r.get("refused")),
                       str(r.get("caution")), str(r.get("accepted")))
    Console().print(levels)
    if output:
        output.write_text(json.dumps(res.summary(), indent=2))


@adapters_app.command("list")
def adapters_list() -> None:
    """Every adapter version: status, canary share, validation figures."""
    from careloop.core.registry import list_adapters
    from careloop.core.schema import AdapterStatus

    rows = list_adapters(_engine())
    table = Table(title="adapters")
    for col in ("name", "status", "canary", "parent", "run", "SS", "ERR", "Overall", "created"):
        table.add_column(col)
    for r in rows:
        m = r.metrics or {}
        table.add_row(r.name, r.status, f"{r.canary_fraction:.0%}" if r.status == AdapterStatus.CANARY else "",
                      r.parent or "base", str(r.run_id or ""), _fmt(m.get("safety_score")), _fmt(m.get("err")),
                      _fmt(m.get("overall")), r.created_at.isoformat(timespec="seconds"))
    Console().print(table)


def _fmt(v: object) -> str:
    return f"{v:.3f}" if isinstance(v, int | float) else ""


@adapters_app.command("promote")
def adapters_promote(
    name: Annotated[str, typer.Argument(help="Adapter to make stable.")],
    reason: Annotated[str, typer.Option(help="Why (recorded).")] = "operator promote",
) -> None:
    """Make an adapter stable now (the gateway switches within one refresh)."""
    from careloop.core.audit_trail import cli_actor, record
    from careloop.core.registry import RegistryError, promote

    engine = _engine()
    try:
        promote(engine, name, actor="operator", reason=reason)
    except RegistryError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc
    record(engine, cli_actor(), "promote", name, reason)
    console.print(f"[green]{name} is stable[/]")


@adapters_app.command("rollback")
def adapters_rollback(
    reason: Annotated[str, typer.Option(help="Why (recorded).")] = "operator rollback",
) -> None:
    """Roll back the canary, or with none the stable adapter to the previous one (or the base model)."""
    from careloop.core.audit_trail import cli_actor, record
    from careloop.core.registry import rollback

    engine = _engine()
    name = rollback(engine, actor="operator", reason=reason)
    if name is None:
        console.print("nothing to roll back: the base model serves")
        raise typer.Exit(1)
    record(engine, cli_actor(), "rollback", name, reason)
    console.print(f"[yellow]rolled back {name}[/]")


def register(app: typer.Typer) -> None:
    """Attach this package's commands to the main `careloop` app."""
    app.command("retrain")(retrain)
    app.command("eval")(evaluate)
    app.add_typer(adapters_app, name="adapters")
