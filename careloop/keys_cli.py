"""`careloop keys`: create, list and revoke client API keys (placeholder until the keys module lands)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Attach `careloop keys` (filled in with client keys)."""
