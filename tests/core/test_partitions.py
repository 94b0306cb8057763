"""Day partitions of exchange and verdict on the real PostgreSQL (revision 0006): a store holding data upgrades
and keeps every row and link, new rows land in day partitions, the purge drops expired days but keeps labelled
exchanges, inserts go on meanwhile, and the downgrade gives plain tables back."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlmodel import Session

from careloop.core.migrations import current_revision, downgrade, head_revision, schema_diff, upgrade
from careloop.core.retention import day_partitioned, day_partitions, ensure_partitions, purge
from careloop.core.schema import Exchange, ReviewSample, Verdict, utcnow
from careloop.core.settings import RetentionSettings
from careloop.core.store import init_db, insert_exchanges, make_engine, session_scope
from tests.core.conftest import inserting

pytestmark = pytest.mark.postgres
AGES = (400, 399, 30, 2, 0)  # days; two of them past a 365-day retention


def row(ident: str, created: datetime) -> dict[str, object]:
    """An exchange row as the gateway's traffic log writes it."""
    return {"id": ident, "created_at": created, "public_model": "assistant", "target": "smollm2-135m",
            "role": "stable", "user_key": None, "request_messages": [{"role": "user", "content": ident}],
            "request_params": {}, "response_text": f"answer {ident}", "finish_reason": "stop", "prompt_tokens": 5,
            "completion_tokens": 3, "latency_ms": 1.0, "status": 200, "stream": False, "sampled": True,
            "judge_state": "done", "claimed_by": None, "claimed_at": None, "request_id": f"r-{ident}",
            "trace_id": None, "key_name": "app", "text_purged_at": None}


def _fill_at_0005(url: str) -> None:
    """Ten exchanges on each of five days, each judged a minute later; two old ones labelled, one sampled."""
    upgrade(url, "0005")
    engine = make_engine(url)
    now = utcnow()
    made = {f"d{age:03d}n{i}": now - timedelta(days=age, minutes=i) for age in AGES for i in range(10)}
    insert_exchanges(engine, [row(ident, created) for ident, created in made.items()])
    with session_scope(engine) as s:
        for ident, created in made.items():
            s.add(Verdict(exchange_id=ident, adapter="smollm2-135m", judge="distilled", harm_level=0,
                          response_class="Accept", score=1.0, created_at=created + timedelta(minutes=1)))
        for ex in ("d400n3", "d002n1"):
            s.add(Verdict(exchange_id=ex, adapter="smollm2-135m", judge="human", harm_level=1,
                          response_class="Caution", score=0.5))
        s.add(ReviewSample(exchange_id="d400n3", kind="random"))
        s.add(ReviewSample(exchange_id="d400n5", kind="random"))  # drawn, never labelled
    engine.dispose()


def _counts(url: str) -> tuple[int, int, int]:
    """(exchanges, verdicts, verdicts whose exchange is there)."""
    engine = make_engine(url)
    with engine.connect() as conn:
        got = (conn.execute(text("SELECT count(*) FROM exchange")).scalar_one(),
               conn.execute(text("SELECT count(*) FROM verdict")).scalar_one(),
               conn.execute(text("SELECT count(*) FROM verdict v JOIN exchange e ON e.id = v.exchange_id"))
               .scalar_one())
    engine.dispose()
    return got


def test_store_with_data_upgrades_to_day_partitions_and_back(fresh_pg: str) -> None:
    _fill_at_0005(fresh_pg)
    before = _counts(fresh_pg)
    assert before == (50, 52, 52)
    upgrade(fresh_pg)
    assert current_revision(fresh_pg) == head_revision()
    engine = make_engine(fresh_pg)
    assert day_partitioned(engine)
    assert _counts(fresh_pg) == before, "every row and every verdict's link survives"
    today = utcnow().date()
    days = day_partitions(engine, "exchange")
    assert {today - timedelta(days=a) for a in AGES} <= set(days)
    assert today + timedelta(days=7) in days and today + timedelta(days=7) in day_partitions(engine, "verdict")
    with engine.connect() as conn:
        assert schema_diff(conn) == []
        homes = conn.execute(text("SELECT DISTINCT tableoid::regclass::text FROM exchange")).scalars().all()
        assert len(homes) == len(AGES) and all(h.startswith("exchange_p") for h in homes)  # one day each
    # the gateway's batched insert, a replay of the same rows, the ORM's look-ups by id, a new verdict
    new = [row(f"new{i}", utcnow()) for i in range(5)]
    insert_exchanges(engine, new)
    insert_exchanges(engine, new)
    with engine.connect() as conn:
        where = conn.execute(text("SELECT DISTINCT tableoid::regclass::text FROM exchange WHERE id LIKE 'new%'"))
        assert where.scalars().all() == [day_partitions(engine, "exchange")[datetime.now(UTC).date()]]
        assert conn.execute(text("SELECT count(*) FROM exchange")).scalar_one() == 55
    with session_scope(engine) as s:
        ex = s.get(Exchange, "new3")
        assert ex is not None and ex.response_text == "answer new3"
        ex.judge_state = "claimed"
        s.add(Verdict(exchange_id="new3", adapter="smollm2-135m", judge="distilled", harm_level=0,
                      response_class="Accept", score=1.0))
    with Session(engine) as s:
        assert s.get(Exchange, "new3").judge_state == "claimed"  # type: ignore[union-attr]
    engine.dispose()

    downgrade(fresh_pg, "0005")
    assert _counts(fresh_pg) == (55, 53, 53)
    engine = make_engine(fresh_pg)
    assert not day_partitioned(engine)
    with engine.connect() as conn:
        assert [d[1].name for d in schema_diff(conn)] == ["ix_verdict_human_exchange"]  # revision 0007's only
        fks = conn.execute(text("SELECT count(*) FROM pg_constraint WHERE contype = 'f'"
                                " AND confrelid = 'exchange'::regclass")).scalar_one()
        assert fks == 3  # verdict, review_sample, review_label
    engine.dispose()
    upgrade(fresh_pg)
    assert _counts(fresh_pg) == (55, 53, 53)


def test_purge_drops_expired_days_and_keeps_labelled(fresh_pg: str) -> None:
    _fill_at_0005(fresh_pg)
    upgrade(fresh_pg)
    engine = make_engine(fresh_pg)
    report = purge(engine, RetentionSettings(exchange_days=365, raw_text_days=None, pause_s=0),
                   sleep=lambda _s: None)
    today = utcnow().date()
    gone = {today - timedelta(days=400), today - timedelta(days=399)}
    assert not gone & set(day_partitions(engine, "exchange"))
    assert not gone & set(day_partitions(engine, "verdict"))
    assert len(report.partitions_dropped) == 4 and report.labelled_moved == 1
    assert report.exchanges_deleted == 0, "whole days went by partition, not by row"
    with engine.connect() as conn:
        ids = set(conn.execute(text("SELECT id FROM exchange")).scalars())
        assert ids == {"d400n3"} | {f"d{a:03d}n{i}" for a in (30, 2, 0) for i in range(10)}
        kept = conn.execute(text("SELECT tableoid::regclass::text, response_text FROM exchange"
                                 " WHERE id = 'd400n3'")).one()
        assert tuple(kept) == ("exchange_default", "answer d400n3")  # labelled: kept whole, in the default
        judges = conn.execute(text("SELECT judge FROM verdict WHERE exchange_id = 'd400n3' ORDER BY judge"))
        assert judges.scalars().all() == ["distilled", "human"]
        assert conn.execute(text("SELECT exchange_id FROM review_sample")).scalars().all() == ["d400n3"]
        assert conn.execute(text("SELECT count(*) FROM verdict")).scalar_one() == 30 + 1 + 2  # young, kept, human
    again = purge(engine, RetentionSettings(exchange_days=365, raw_text_days=None, pause_s=0))
    assert again.partitions_dropped == [] and again.exchanges_deleted == 0
    assert _counts(fresh_pg)[0] == 31
    engine.dispose()


def test_rows_outside_the_partitions_go_to_default_and_move_out(fresh_pg: str) -> None:
    upgrade(fresh_pg)
    engine = make_engine(fresh_pg)
    later = utcnow() + timedelta(days=20)
    insert_exchanges(engine, [row("future", later)])
    with engine.connect() as conn:
        assert conn.execute(text("SELECT tableoid::regclass::text FROM exchange")).scalar_one() == "exchange_default"
    assert ensure_partitions(engine, later, days_ahead=0) == 2
    with engine.connect() as conn:
        home = conn.execute(text("SELECT tableoid::regclass::text FROM exchange")).scalar_one()
    assert home == day_partitions(engine, "exchange")[later.astimezone(UTC).date()]
    engine.dispose()


def test_store_made_by_create_all_on_postgres_gets_partitioned(fresh_pg: str) -> None:
    engine = make_engine(fresh_pg)
    init_db(engine)
    insert_exchanges(engine, [row("old", utcnow() - timedelta(days=3))])
    upgrade(fresh_pg)
    assert current_revision(fresh_pg) == head_revision() and day_partitioned(engine)
    assert _counts(fresh_pg)[0] == 1
    engine.dispose()


def test_inserts_continue_while_days_are_dropped(fresh_pg: str) -> None:
    upgrade(fresh_pg)
    engine = make_engine(fresh_pg)
    start = utcnow() - timedelta(days=420)
    with engine.begin() as conn:
        conn.execute(text("SELECT careloop_ensure_day_partitions(:a, :b)"),
                     {"a": start.date(), "b": start.date() + timedelta(days=14)})
    insert_exchanges(engine, [row(f"old{d}-{i}", start + timedelta(days=d, seconds=i))
                              for d in range(15) for i in range(400)])
    with inserting(engine, lambda i: [row(f"w{i}-{k}", utcnow()) for k in range(10)]) as waits:
        time.sleep(0.2)
        report = purge(engine, RetentionSettings(exchange_days=365, raw_text_days=None, pause_s=0.01))
        time.sleep(0.2)
    assert len(report.partitions_dropped) == 30
    assert len(waits) >= 5, "the writer got to insert while the purge ran"
    assert max(waits) < 1.0, f"an insert waited {max(waits):.2f} s"
    assert _counts(fresh_pg)[0] == 10 * len(waits)
    engine.dispose()


def test_a_long_reader_holds_up_inserts_only_for_the_lock_timeout(fresh_pg: str) -> None:
    """A drop queued behind a long reader would hold up every insert behind it: it gives up after its lock
    timeout, lets the inserts through and tries again once the reader is done."""
    upgrade(fresh_pg)
    engine = make_engine(fresh_pg)
    old = utcnow() - timedelta(days=400)
    with engine.begin() as conn:
        conn.execute(text("SELECT careloop_ensure_day_partitions(:d, :d)"), {"d": old.date()})
    insert_exchanges(engine, [row(f"old{i}", old + timedelta(seconds=i)) for i in range(100)])
    reading = threading.Event()

    def reader() -> None:
        with engine.begin() as conn:  # a report reading the whole table for 1.5 s
            conn.execute(text("SELECT count(*) FROM exchange"))
            reading.set()
            time.sleep(1.5)

    slow = threading.Thread(target=reader)
    with inserting(engine, lambda i: [row(f"w{i}-{k}", utcnow()) for k in range(10)]) as waits:
        slow.start()
        assert reading.wait(10)
        t = time.perf_counter()
        report = purge(engine, RetentionSettings(exchange_days=365, raw_text_days=None, pause_s=0.05))
        took = time.perf_counter() - t
        slow.join(10)
    assert len(report.partitions_dropped) == 2 and took > 1.0, "the drop waited for the reader"
    assert max(waits) < 1.0, f"an insert waited {max(waits):.2f} s behind the queued drop"
    engine.dispose()
