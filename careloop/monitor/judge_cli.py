"""`careloop judge train|audit` and `careloop review` (a person labels sampled exchanges in the terminal)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

if TYPE_CHECKING:
    from careloop.core.settings import Settings
    from careloop.monitor.datasets import LabelledExample

console = Console(stderr=True)
judge_app = typer.Typer(help="Judges: train the distilled judge, audit a judge against labels.",
                        no_args_is_help=True)


def _labelled(spec: str, settings: Settings) -> list[LabelledExample]:
    """A labelled set by its spec (`store` = the human labels in the store); a bad spec exits with status 2."""
    from careloop.monitor.datasets import DatasetError, load_named

    try:
        if spec != "store":
            return load_named(spec, settings.data_dir)
        from careloop.core.store import init_db, make_engine
        from careloop.monitor.review import human_examples

        engine = make_engine(settings.database_url or "")
        init_db(engine)
        return human_examples(engine)
    except DatasetError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc


@judge_app.command("train")
def train(
    heldout: Annotated[str | None, typer.Option(
        help="Keep this XSTest source model out of training and record κ on it (gpt4, llama2new, "
             "mistralinstruct).")] = None,
    extra: Annotated[list[str] | None, typer.Option(
        "--extra", help="Also train on these labelled replies (repeatable): `store` (the human labels from "
                        "`careloop review`) or a JSONL/CSV file as `judge audit --data` reads it. Your own "
                        "model's labelled replies are what lifts κ most.")] = None,
) -> None:
    """Train a new version of the distilled judge (distilled-v<N> under the judges dir)."""
    from careloop.core.settings import load_settings
    from careloop.monitor.datasets import XSTEST_MODELS
    from careloop.monitor.judges.distilled_train import rich_progress, train_distilled

    settings = load_settings()
    if heldout is not None and heldout not in XSTEST_MODELS:
        console.print(f"[red]error:[/] --heldout must be one of {', '.join(XSTEST_MODELS)}")
        raise typer.Exit(2)
    labelled = [e for spec in extra or [] for e in _labelled(spec, settings)]
    if heldout is not None and any(e.source == "xstest" and e.group == heldout for e in labelled):
        console.print(f"[red]error:[/] --extra holds replies of the held-out model {heldout}")
        raise typer.Exit(2)
    if extra and not any(e.response and e.response_class for e in labelled):
        console.print(f"[red]error:[/] no labelled replies (a reply and its response class) in {', '.join(extra)}")
        raise typer.Exit(2)
    settings.ensure_dirs()
    update, stop = rich_progress()
    try:
        report = train_distilled(settings, heldout_model=heldout, progress=update, extra=labelled)
    finally:
        stop()
    console.print(f"[green]distilled judge v{report.version}[/] at {report.path} ({report.seconds:.0f} s)")
    if report.heldout:
        console.print(f"held-out {report.heldout['xstest_model']}: κ {report.heldout['kappa']:.3f}, "
                      f"accuracy {report.heldout['accuracy']:.1%} (n={report.heldout['n']})")
    console.print(json.dumps(report.counts, indent=2))


@judge_app.command("audit")
def audit_cmd(
    judge: Annotated[str, typer.Option("--judge", help="self, external, distilled or ensemble.")],
    data: Annotated[str, typer.Option("--data", help=(
        "Labelled data: a JSONL, CSV (XSTest's own) or parquet file, `xstest[:model,...]`, `seed`, "
        "`medsafetybench`, `medquad`, or `store` (the human labels in the store)."))],
    out: Annotated[Path | None, typer.Option(help="JSON report path (default: reports dir).")] = None,
    limit: Annotated[int | None, typer.Option(help="Audit a random sample of N items (seed 0).")] = None,
    batch_size: Annotated[int, typer.Option(help="Items per judge call.")] = 32,
) -> None:
    """Audit a judge against labels: accuracy, Cohen's κ, confusion matrix, ERR/SS bias; writes JSON."""
    from careloop.core.schema import utcnow
    from careloop.core.settings import load_settings
    from careloop.monitor.audit import audit, format_report, write_report
    from careloop.monitor.judges import JUDGE_NAMES, build_judge

    settings = load_settings()
    if judge not in JUDGE_NAMES:
        console.print(f"[red]error:[/] unknown judge {judge!r}; choose one of {', '.join(JUDGE_NAMES)}")
        raise typer.Exit(2)
    examples = _labelled(data, settings)
    if limit is not None and limit < len(examples):
        import random

        examples = random.Random(0).sample(examples, max(1, limit))
    try:
        j = build_judge(judge, settings)
    except (ValueError, FileNotFoundError) as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc

    from rich.progress import Progress

    async def go() -> object:
        with Progress(console=console, transient=True) as bar:
            task = bar.add_task(f"judging with {judge}", total=len(examples))
            try:
                return await audit(j, examples, data, batch_size,
                                   lambda done, total: bar.update(task, completed=done, total=total))
            finally:
                await j.aclose()

    try:
        report = asyncio.run(go())
    except ValueError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc
    from careloop.monitor.audit import AuditReport

    assert isinstance(report, AuditReport)
    path = out or settings.reports_dir / f"audit-{judge}-{Path(data).stem.replace(':', '_')}-" \
                                         f"{utcnow().strftime('%Y%m%dT%H%M%S')}.json"
    write_report(report, path)
    typer.echo(format_report(report))
    console.print(f"report: {path}")


def review_cmd(
    limit: Annotated[int | None, typer.Option(help="Exchanges to show (default: monitor.review_sample_size).")]
    = None,
    reviewer: Annotated[str, typer.Option(help="Your name, stored with the label.")] = "operator",
) -> None:
    """Label sampled exchanges (judge disagreements first); labels are stored as judge `human`."""
    from careloop.core.audit_trail import Actor, record
    from careloop.core.settings import load_settings
    from careloop.core.store import init_db, make_engine
    from careloop.monitor.review import ReviewError, record_human_verdict, review_queue

    settings = load_settings()
    engine = make_engine(settings.database_url or "")
    init_db(engine)
    items = review_queue(engine, limit or settings.monitor.review_sample_size)
    if not items:
        console.print("nothing to review: no sampled exchanges without a human label")
        return
    out = Console()
    done = 0
    for n, item in enumerate(items, 1):
        out.rule(f"{n}/{len(items)}  exchange {item.exchange_id}  ({item.adapter})"
                 + ("  [yellow]judges disagree[/]" if item.disagreement else ""))
        out.print(f"[bold]prompt:[/] {item.prompt}")
        out.print(f"[bold]response:[/] {item.response[:2000]}")
        for j, v in item.verdicts.items():
            out.print(f"  {j}: harm {v['harm_level']}, {v['response_class']}")
        answer = typer.prompt("harm level 0-3 and class a/c/r (e.g. '0 a'), s to skip, q to quit",
                              default="s").strip().lower()
        if answer in ("q", "quit"):
            break
        if answer in ("s", "skip", ""):
            continue
        parts = answer.replace(",", " ").split()
        classes = {"a": "Accept", "c": "Caution", "r": "Refuse"}
        if len(parts) != 2 or parts[1][:1] not in classes:
            out.print("[red]expected a level and a class, e.g. '2 r'; skipped[/]")
            continue
        try:
            label = record_human_verdict(engine, item.exchange_id, int(parts[0]) if parts[0].isdigit() else -1,
                                         classes[parts[1][:1]], reviewer)
            record(engine, Actor(reviewer, "cli"), "label", label.exchange_id,
                   details={"harm_level": label.harm_level, "response_class": label.response_class})
            done += 1
        except ReviewError as exc:
            out.print(f"[red]{exc}; skipped[/]")
    console.print(f"stored {done} human label(s)")


def register(app: typer.Typer) -> None:
    """Attach `judge train|audit` and `review` to the main app."""
    app.add_typer(judge_app, name="judge")
    app.command("review")(review_cmd)
