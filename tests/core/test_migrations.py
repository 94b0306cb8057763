"""Alembic migrations of the store: fresh stores, old stores with data, stores made before Alembic."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from careloop.core.migrations import (
    BASELINE_REVISION,
    MigrationError,
    current_revision,
    downgrade,
    head_revision,
    schema_diff,
    upgrade,
)
from careloop.core.store import init_db, make_engine


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty store on SQLite or on the real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return str(request.getfixturevalue("fresh_pg"))


def _insert_rows(url: str) -> None:
    """Rows in the baseline tables, written with plain SQL as an old release would have."""
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO exchange (id, created_at, public_model, target, role, status, stream, sampled,"
            " judge_state, request_messages, request_params) VALUES"
            " ('ex1', :now, 'assistant', 'smollm2-135m', 'stable', 200, false, true, 'pending', '[]', '{}')"
        ), {"now": now})
        conn.execute(text(
            "INSERT INTO verdict (exchange_id, created_at, adapter, judge, judge_version, harm_level,"
            " response_class, score) VALUES ('ex1', :now, 'smollm2-135m', 'distilled', '1', 2, 'Refuse', 1.0)"
        ), {"now": now})
        conn.execute(text(
            "INSERT INTO retrain_run (created_at, status, backend) VALUES (:now, 'running', 'kubernetes')"
        ), {"now": now})
        conn.execute(text(
            "INSERT INTO adapter (name, base_model, path, version, status, canary_fraction, created_at,"
            " updated_at) VALUES ('smollm2-135m-safety-v1', 'smollm2-135m', '/adapters/v1', 1, 'stable', 0,"
            " :now, :now)"
        ), {"now": now})
    engine.dispose()


def _assert_rows_survived(url: str) -> None:
    engine = make_engine(url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT judge_state FROM exchange")).scalar_one() == "pending"
        assert conn.execute(text("SELECT response_class FROM verdict")).scalar_one() == "Refuse"
        assert conn.execute(text("SELECT status FROM retrain_run")).scalar_one() == "running"
        assert conn.execute(text("SELECT path FROM adapter")).scalar_one() == "/adapters/v1"
        assert schema_diff(conn) == []
    engine.dispose()


def _indexes(url: str, table: str) -> set[str]:
    engine = make_engine(url)
    names = {ix["name"] for ix in inspect(engine).get_indexes(table) if ix["name"]}
    engine.dispose()
    return names


def test_fresh_store_reaches_head_and_matches_schema(store_url: str) -> None:
    """A new store gets every revision; head is exactly careloop/core/schema.py (model changes need a revision)."""
    assert current_revision(store_url) is None
    upgrade(store_url)
    assert current_revision(store_url) == head_revision()
    engine = make_engine(store_url)
    with engine.connect() as conn:
        assert schema_diff(conn) == [], "careloop/core/schema.py changed without an Alembic revision"
    engine.dispose()
    upgrade(store_url)  # idempotent
    assert current_revision(store_url) == head_revision()


def test_old_store_upgrades_with_its_rows(store_url: str) -> None:
    """A store at the initial revision, holding data, upgrades to head and keeps every row."""
    upgrade(store_url, BASELINE_REVISION)
    assert current_revision(store_url) == BASELINE_REVISION
    assert "ix_retrain_run_status" not in _indexes(store_url, "retrain_run")
    _insert_rows(store_url)
    upgrade(store_url)
    assert current_revision(store_url) == head_revision()
    assert "ix_retrain_run_status" in _indexes(store_url, "retrain_run")
    _assert_rows_survived(store_url)


def test_store_made_before_alembic_is_stamped_and_upgraded(store_url: str) -> None:
    """Tables from the baseline `create_all`, no alembic_version: stamped at the baseline, then upgraded."""
    upgrade(store_url, BASELINE_REVISION)
    engine = make_engine(store_url)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE alembic_version"))
    engine.dispose()
    assert current_revision(store_url) is None
    _insert_rows(store_url)
    upgrade(store_url)
    assert current_revision(store_url) == head_revision()
    _assert_rows_survived(store_url)


def test_store_made_by_current_create_all_is_stamped_at_head(tmp_path: Path) -> None:
    """`init_db` (create_all of today's schema) gives a store that is stamped head without any DDL."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    engine = make_engine(url)
    init_db(engine)
    engine.dispose()
    upgrade(url)
    assert current_revision(url) == head_revision()


def test_downgrade_to_base_and_back(tmp_path: Path) -> None:
    """Every revision can be reverted and applied again."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    upgrade(url)
    downgrade(url, "base")
    assert "exchange" not in set(inspect(make_engine(url)).get_table_names())
    upgrade(url)
    assert current_revision(url) == head_revision()


@pytest.mark.postgres
def test_replicas_migrating_at_once_on_postgres(fresh_pg: str) -> None:
    """Init containers of several replicas upgrade together: all succeed, the store is at head once."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            upgrade(fresh_pg)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert current_revision(fresh_pg) == head_revision()
    engine = make_engine(fresh_pg)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar_one() == 1
    engine.dispose()


def test_missing_url_is_a_clear_error() -> None:
    with pytest.raises(MigrationError, match="CARELOOP_DATABASE_URL"):
        upgrade("")


def test_human_verdict_index_is_partial_and_reverts(store_url: str) -> None:
    """Revision 0007 indexes the human verdicts only (on PostgreSQL on every day partition too), and reverts."""
    upgrade(store_url)
    sqlite = store_url.startswith("sqlite")
    query = ("SELECT sql FROM sqlite_master WHERE name = 'ix_verdict_human_exchange'" if sqlite else
             "SELECT pg_get_indexdef(CAST('ix_verdict_human_exchange' AS regclass))")
    engine = make_engine(store_url)
    with engine.connect() as conn:
        assert "WHERE" in conn.execute(text(query)).scalar_one()
        assert "judge" in conn.execute(text(query)).scalar_one().split("WHERE")[1]
        if not sqlite:
            on_parts = conn.execute(text(
                "SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                " WHERE i.inhparent = CAST('ix_verdict_human_exchange' AS regclass)")).scalar_one()
            partitions = conn.execute(text("SELECT count(*) FROM pg_inherits"
                                           " WHERE inhparent = CAST('verdict' AS regclass)")).scalar_one()
            assert on_parts == partitions > 1
    engine.dispose()
    downgrade(store_url, "0006")
    assert "ix_verdict_human_exchange" not in _indexes(store_url, "verdict")
    upgrade(store_url)
    assert "ix_verdict_human_exchange" in _indexes(store_url, "verdict")
