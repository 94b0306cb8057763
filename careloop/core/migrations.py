"""Bring a store's schema to the current version with Alembic (careloop/core/alembic), SQLite or PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from careloop.core.store import is_sqlite, make_engine

SCRIPT_LOCATION = Path(__file__).resolve().parent / "alembic"
# The schema the foundation's `create_all` produced: stores made before Alembic are stamped here.
BASELINE_REVISION = "0001"
# The last revision before PostgreSQL's day partitions: a PostgreSQL store `create_all` made is stamped here.
UNPARTITIONED_REVISION = "0005"
# pg_advisory_xact_lock key: replicas that start together (init containers) migrate one after another.
_PG_LOCK_KEY = 0x6361_7265_6C6F  # "carelo"


class MigrationError(RuntimeError):
    """The store cannot be brought to the current schema."""


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config for careloop's migrations, bound to `connection` when given."""
    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPT_LOCATION))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    """The newest revision in careloop/core/alembic/versions."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise MigrationError(f"no migrations found in {SCRIPT_LOCATION}")
    return head


def _current(connection: Connection) -> str | None:
    """The revision the store on `connection` is stamped with (None: not under Alembic)."""
    return MigrationContext.configure(connection).get_current_revision()


def partitioned_tables(connection: Connection) -> set[str]:
    """The store's partitioned tables (on PostgreSQL after revision 0006: exchange, verdict; none on SQLite)."""
    if is_sqlite(str(connection.engine.url)):
        return set()
    return set(connection.execute(text("SELECT relname FROM pg_class WHERE relkind = 'p'")).scalars())


def diff_filters(connection: Connection) -> dict[str, Any]:
    """Alembic comparison options that leave out what day partitioning adds or takes away (revision 0006).

    The day partitions and the default partition are not tables of the model, and a partitioned `exchange` can
    take no foreign key on `id` alone (its key is (id, created_at)), so the model's keys to it are not missed.
    """
    parted = partitioned_tables(connection)
    if not parted:
        return {}
    partitions = set(connection.execute(text("SELECT relname FROM pg_class WHERE relispartition")).scalars())

    def include_name(name: str | None, type_: str, _parents: Any) -> bool:
        return not (type_ == "table" and name in partitions)

    def include_object(obj: Any, _name: str | None, type_: str, reflected: bool, _compare_to: Any) -> bool:
        return not (type_ == "foreign_key_constraint" and not reflected and obj.referred_table.name in parted)

    return {"include_name": include_name, "include_object": include_object}


def schema_diff(connection: Connection) -> list[Any]:
    """What differs between the live store and the tables in careloop/core/schema.py (empty: in step)."""
    from sqlmodel import SQLModel

    import careloop.core.schema  # noqa: F401  (registers the tables)

    ctx = MigrationContext.configure(connection, opts={"compare_type": True, **diff_filters(connection)})
    return list(compare_metadata(ctx, SQLModel.metadata))


def _stamp_revision(connection: Connection) -> str:
    """The revision a store made by `create_all` (no `alembic_version`) is at."""
    if schema_diff(connection):
        return BASELINE_REVISION
    if is_sqlite(str(connection.engine.url)) or "exchange" in partitioned_tables(connection):
        return "head"
    return UNPARTITIONED_REVISION  # today's tables, not partitioned yet: 0006 partitions them


def current_revision(database_url: str) -> str | None:
    """The revision the store at `database_url` is at (None: empty or created before Alembic)."""
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            return _current(conn)
    finally:
        engine.dispose()


def upgrade(database_url: str, revision: str = "head") -> None:
    """Create or migrate every table of the store at `database_url` to `revision` (default: the newest).

    An empty store gets every revision. A store created by `create_all` before Alembic (tables but no
    `alembic_version`) is stamped first: at head when it already matches the current schema (on PostgreSQL at
    the revision before the day partitions while its tables are plain), otherwise at the baseline revision, and
    then upgraded. On PostgreSQL the whole upgrade is one transaction under an advisory
    lock, so several replicas may run it at once.
    """
    if not database_url:
        raise MigrationError("no store URL given (CARELOOP_DATABASE_URL)")
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            if not is_sqlite(str(engine.url)):
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
            cfg = alembic_config(conn)
            if _current(conn) is None and inspect(conn).has_table("exchange"):
                command.stamp(cfg, _stamp_revision(conn))
            command.upgrade(cfg, revision)
    finally:
        engine.dispose()


def downgrade(database_url: str, revision: str) -> None:
    """Take the store at `database_url` back to `revision` (operators only; dropped columns lose data)."""
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            command.downgrade(alembic_config(conn), revision)
    finally:
        engine.dispose()
