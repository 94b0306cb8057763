"""Alembic environment: runs the store's migrations on a connection `service.migrations` hands in."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

import careloop.core.schema  # noqa: F401  (registers the tables on SQLModel.metadata)
from careloop.core.store import is_sqlite, make_engine

config = context.config
target_metadata = SQLModel.metadata


def _run(connection: Connection) -> None:
    """Configure the migration context on `connection` and run the pending revisions."""
    from careloop.core.migrations import diff_filters

    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=is_sqlite(str(connection.engine.url)),  # SQLite alters tables by copying them
        compare_type=True,
        **diff_filters(connection),  # day partitions (revision 0006) are not model tables
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run on the connection given in `config.attributes`, or on a fresh engine for `-x url=...`."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("give the store URL: alembic -x url=<database url> ...")
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("careloop's migrations run online only (they need the live store)")
run_migrations_online()
