"""The traffic store: engine setup for SQLite and PostgreSQL, and the queries every part shares."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from sqlalchemy import event, insert
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, SQLModel, create_engine, select

from careloop.core.schema import LIVE_ADAPTER_STATES, Adapter, AdapterStatus, Exchange, Lease, utcnow


def normalize_url(url: str) -> str:
    """Pick the psycopg 3 driver for plain PostgreSQL URLs."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def is_sqlite(url: str) -> bool:
    """Whether the URL names a SQLite database."""
    return url.startswith("sqlite")


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for the store: SQLite in WAL mode, or PostgreSQL with a small pool."""
    url = normalize_url(url)
    if is_sqlite(url):
        if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
            from pathlib import Path

            Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("pool_size", 5)
    kwargs.setdefault("connect_args", {"connect_timeout": 5})
    return create_engine(url, **kwargs)


def init_db(engine: Engine) -> None:
    """Create every table that does not exist yet."""
    import careloop.core.schema  # noqa: F401  (registers the tables)

    SQLModel.metadata.create_all(engine)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def insert_exchanges(engine: Engine, rows: Iterable[dict[str, Any]]) -> int:
    """Insert a batch of exchange rows in one transaction; rows already stored are skipped.

    A row is "already stored" when its id is; on a day-partitioned PostgreSQL store (revision 0006) when its id and
    `created_at` are, so rows that may be replayed must carry their `created_at` (the gateway's do).
    """
    batch = list(rows)
    if not batch:
        return 0
    with engine.begin() as conn:
        if is_sqlite(str(engine.url)):
            stmt = insert(Exchange).prefix_with("OR IGNORE")
        else:
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            # no conflict target: the key is `id` on a plain table and (id, created_at) on a day-partitioned one
            # (revision 0006); a replayed row carries its first created_at, so it conflicts either way
            stmt = pg_insert(Exchange).on_conflict_do_nothing()
        conn.execute(stmt, batch)
    return len(batch)


def live_adapters(engine: Engine) -> tuple[Adapter | None, Adapter | None]:
    """The stable and the canary adapter in the registry (None where there is none)."""
    with Session(engine) as session:
        rows = session.exec(select(Adapter).where(Adapter.status.in_(LIVE_ADAPTER_STATES))).all()  # type: ignore[attr-defined]
    stable = next((a for a in rows if a.status == AdapterStatus.STABLE), None)
    canary = next((a for a in rows if a.status == AdapterStatus.CANARY), None)
    return stable, canary


def acquire_lease(engine: Engine, name: str, holder: str, ttl_s: float) -> bool:
    """Take the named lease if it is free or expired (or already ours); True on success."""
    now = utcnow()
    expires = now + timedelta(seconds=ttl_s)
    with Session(engine) as session:
        lease = session.get(Lease, name, with_for_update=not is_sqlite(str(engine.url)))
        if lease is None:
            session.add(Lease(name=name, holder=holder, acquired_at=now, expires_at=expires))
            try:
                session.commit()
            except IntegrityError:
                session.rollback()
                return False
            return True
        if lease.holder != holder and lease.expires_at > now:
            session.rollback()
            return False
        if lease.holder != holder:
            lease.acquired_at = now
        lease.holder, lease.expires_at = holder, expires
        session.add(lease)
        session.commit()
        return True


def release_lease(engine: Engine, name: str, holder: str) -> None:
    """Give the named lease back if we hold it."""
    with session_scope(engine) as session:
        lease = session.get(Lease, name)
        if lease is not None and lease.holder == holder:
            session.delete(lease)


def lease_holder(engine: Engine, name: str) -> str | None:
    """Who holds the named lease now (None if free or expired)."""
    with Session(engine) as session:
        lease = session.get(Lease, name)
        if lease is None or lease.expires_at <= utcnow():
            return None
        return lease.holder
