"""The store on SQLite and on the real PostgreSQL: batched inserts, idempotence, leases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func
from sqlmodel import Session, select

from careloop.core.schema import Exchange
from careloop.core.store import (
    acquire_lease,
    init_db,
    insert_exchanges,
    lease_holder,
    make_engine,
    release_lease,
)

T0 = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)


def _rows(n: int, offset: int = 0) -> list[dict]:
    # each row carries its creation time, as the gateway's do (a replay from its spool brings the same time back:
    # on a day-partitioned PostgreSQL store the key is (id, created_at))
    return [
        {"id": f"ex{i:06d}", "created_at": T0 + timedelta(seconds=i), "target": "base",
         "request_messages": [{"role": "user", "content": f"q{i}"}],
         "request_params": {}, "response_text": f"a{i}", "status": 200, "sampled": i % 10 == 0,
         "judge_state": "pending" if i % 10 == 0 else "none"}
        for i in range(offset, offset + n)
    ]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path):
    url = f"sqlite:///{tmp_path / 'store.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    eng = make_engine(url)
    init_db(eng)
    with eng.begin() as conn:
        conn.exec_driver_sql("DELETE FROM verdict")  # other tests share the session database
        conn.exec_driver_sql("DELETE FROM exchange")
        conn.exec_driver_sql("DELETE FROM lease")
    yield eng
    eng.dispose()


def test_batched_insert_is_idempotent(engine) -> None:
    assert insert_exchanges(engine, _rows(300)) == 300
    insert_exchanges(engine, _rows(100, offset=250))  # 50 overlap, replayed from a spool
    with Session(engine) as s:
        assert s.exec(select(func.count()).select_from(Exchange)).one() == 350
        row = s.get(Exchange, "ex000010")
        assert row is not None and row.sampled and row.request_messages[0]["content"] == "q10"


def test_lease_is_exclusive_until_released_or_expired(engine) -> None:
    assert acquire_lease(engine, "retrain", "a", ttl_s=60)
    assert not acquire_lease(engine, "retrain", "b", ttl_s=60)
    assert acquire_lease(engine, "retrain", "a", ttl_s=60)  # renew
    assert lease_holder(engine, "retrain") == "a"
    release_lease(engine, "retrain", "b")  # not b's to release
    assert lease_holder(engine, "retrain") == "a"
    release_lease(engine, "retrain", "a")
    assert lease_holder(engine, "retrain") is None
    assert acquire_lease(engine, "retrain", "b", ttl_s=-1)  # taken, but already expired
    assert acquire_lease(engine, "retrain", "a", ttl_s=60)
    assert lease_holder(engine, "retrain") == "a"
