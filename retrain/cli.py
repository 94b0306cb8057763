"""Command-line commands of this package (heavy imports stay inside the commands)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Attach this package's commands to the main `careloop` app."""
