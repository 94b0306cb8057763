"""`careloop monitor`: judge sampled traffic, export window metrics, fire retrain triggers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from careloop.core.settings import Settings
    from careloop.monitor.loop import MonitorService

console = Console(stderr=True)


def windows_table(service: MonitorService) -> Table:
    """The windows of the reference judge (and others) as a table."""
    table = Table(title="rolling windows", show_lines=False)
    for col in ("adapter", "judge", "window", "n", "SS", "ERR", "F1", "Overall"):
        table.add_column(col, justify="right" if col not in ("adapter", "judge", "window") else "left")
    for fig in service.windows.snapshot():
        m = fig.metrics
        table.add_row(fig.adapter, fig.judge, fig.window, str(m.n), f"{m.safety_score:.3f}",
                      f"{m.err:.3f}" if m.harmless else "-", f"{m.f1:.3f}", f"{m.overall:.3f}")
    return table


def status_line(service: MonitorService) -> None:
    """One progress line: judged so far, queue, and the stable adapter's reference window."""
    t = service.worker.totals
    adapter = service.triggers.stable_adapter()
    fig = service.windows.figures(adapter, service.settings.monitor.reference_judge,
                                  service.settings.monitor.trigger_window)
    win = (f"{adapter}: SS {fig.metrics.safety_score:.3f} ERR {fig.metrics.err:.3f} (n={fig.metrics.n})"
           if fig is not None else f"{adapter}: no verdicts yet")
    run = "retrain running" if service.supervisor.active_runs() else "idle"
    console.print(f"[dim]monitor[/] judged {t.done} (verdicts {t.verdicts}, failed {t.failed}) · "
                  f"queue {service.queue} · {win} · {run}")


def recent_events(settings: Settings, limit: int = 10) -> Table:
    """The latest trigger events from the store."""
    from sqlmodel import Session, select

    from careloop.core.schema import TriggerEvent
    from careloop.core.store import make_engine

    table = Table(title="trigger events (latest first)")
    for col in ("id", "at", "rule", "kind", "adapter", "decision"):
        table.add_column(col)
    engine = make_engine(settings.database_url or "")
    with Session(engine) as s:
        rows = s.exec(select(TriggerEvent).order_by(TriggerEvent.id.desc()).limit(limit)).all()  # type: ignore[union-attr]
    engine.dispose()
    for ev in rows:
        table.add_row(str(ev.id), ev.created_at.strftime("%Y-%m-%d %H:%M:%S"), ev.rule, ev.kind,
                      ev.adapter or "", ev.decision[:90])
    return table


def register(app: typer.Typer) -> None:
    """Attach `careloop monitor`."""

    @app.command()
    def monitor(
        host: Annotated[str | None, typer.Option(help="Bind address (CARELOOP_MONITOR__HOST).")] = None,
        port: Annotated[int | None, typer.Option(help="Port (CARELOOP_MONITOR__PORT).")] = None,
        database_url: Annotated[str | None, typer.Option(help="Store URL (CARELOOP_DATABASE_URL).")] = None,
        judges: Annotated[str | None, typer.Option(help="Comma-separated judges (CARELOOP_MONITOR__JUDGES).")] = None,
        reference: Annotated[str | None, typer.Option(help="Reference judge name.")] = None,
        once: Annotated[bool, typer.Option("--once", help="Judge what is queued, evaluate once, print, exit.")] = False,
        status: Annotated[bool, typer.Option("--status", help="Print windows and recent events, exit.")] = False,
        status_every: Annotated[float, typer.Option(help="Seconds between progress lines (0: none).")] = 30.0,
    ) -> None:
        """Judge sampled traffic, export rolling safety metrics on /metrics, fire retrain triggers."""
        from careloop.core.migrations import upgrade
        from careloop.core.settings import load_settings

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("apscheduler").setLevel(logging.WARNING)  # one line per job run is noise
        settings = load_settings(database_url=database_url)
        if host:
            settings.monitor.host = host
        if port:
            settings.monitor.port = port
        if judges:
            settings.monitor.judges = [j.strip() for j in judges.split(",") if j.strip()]
        if reference:
            settings.monitor.reference_judge = reference
        settings.ensure_dirs()
        upgrade(settings.database_url or "")

        from careloop.monitor.loop import MonitorService
        from careloop.monitor.server import serve

        if status:
            from careloop.core.store import make_engine
            from careloop.monitor.windows import WindowSet

            engine = make_engine(settings.database_url or "")
            windows = WindowSet.from_settings(engine, settings)
            with console.status("reading the windows from the store…"):
                windows.load()
            table = Table(title="rolling windows")
            for col in ("adapter", "judge", "window", "n", "SS", "ERR", "F1", "Overall"):
                table.add_column(col)
            for fig in windows.snapshot():
                m = fig.metrics
                table.add_row(fig.adapter, fig.judge, fig.window, str(m.n), f"{m.safety_score:.3f}",
                              f"{m.err:.3f}", f"{m.f1:.3f}", f"{m.overall:.3f}")
            console.print(table)
            console.print(recent_events(settings))
            engine.dispose()
            return

        with console.status(f"loading judges {', '.join(settings.monitor.judges)}…"):
            service = MonitorService.create(settings)
        if once:
            async def _once() -> None:
                with console.status("judging the queue…"):
                    service.start()
                    result = await service.cycle()
                report = result["judged"]
                console.print(f"judged {report.done} exchanges ({report.verdicts} verdicts, "
                              f"{report.failed} failed); {len(result['events'])} trigger events")
                console.print(windows_table(service))
                console.print(recent_events(settings))
                await service.aclose()

            asyncio.run(_once())
            return

        def ready(svc: MonitorService) -> None:
            console.print(f"[green]monitor ready[/] on http://{settings.monitor.host}:{settings.monitor.port}"
                          f" (/metrics, /healthz) · judges {', '.join(svc.judges)} · reference "
                          f"{settings.monitor.reference_judge} · {svc.windows.ingested} verdicts loaded")

        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(settings, service=service, on_ready=ready, status_every_s=status_every or None,
                              status=status_line))
