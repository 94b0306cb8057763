"""Bring a store's schema to the current version."""

from __future__ import annotations

from service.store import init_db, make_engine


def upgrade(database_url: str) -> None:
    """Create or migrate every table of the store at `database_url`."""
    engine = make_engine(database_url)
    try:
        init_db(engine)
    finally:
        engine.dispose()
