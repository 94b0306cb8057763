"""The monitor package's commands: `monitor`, `judge train|audit`, `review` (heavy imports stay inside)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Attach the monitor's and the judges' commands to the main `careloop` app."""
    from careloop.monitor.judge_cli import register as register_judges
    from careloop.monitor.monitor_cli import register as register_monitor

    register_monitor(app)
    register_judges(app)
