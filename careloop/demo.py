"""`careloop demo`: replay real prompts through the running loop until a realignment completes."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Attach the `demo` command."""

    @app.command()
    def demo() -> None:
        """Replay real prompts through the loop until a realignment completes; print and plot before/after."""
        typer.echo("careloop demo: not built yet (issue: the whole loop on one machine)", err=True)
        raise typer.Exit(2)
