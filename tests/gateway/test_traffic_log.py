"""The traffic log: batching, drain, drops, and spool-then-replay when the store is unreachable and comes back."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import orjson
import pytest
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from careloop.core.schema import Exchange
from careloop.core.store import init_db, make_engine
from careloop.gateway.metrics import GatewayMetrics
from careloop.gateway.record import Record
from careloop.gateway.rows import build_row, parse_stream
from careloop.gateway.traffic_log import TrafficLog
from tests.conftest import free_port
from tests.gateway.procs import Forwarder

pytestmark = pytest.mark.asyncio(loop_scope="session")


def record(i: int, sampled: bool = False) -> Record:
    body = orjson.dumps({"choices": [{"index": 0, "message": {"content": f"answer {i}, call 555-867-5309"},
                                      "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": 5, "completion_tokens": 7}})
    return Record(id=f"ex{i:08d}", created=time.time(), public_model="assistant", target="base", role="stable",
                  user_key=None, request={"model": "base", "messages": [
                      {"role": "user", "content": f"q{i} my SSN is 123-45-6789"}], "temperature": 0.2},
                  response=body, status=200, stream=False, sampled=sampled, latency_ms=3.5)


def count(engine: Engine) -> int:
    with Session(engine) as session:
        return int(session.exec(select(func.count()).select_from(Exchange)).one())


async def wait_for(predicate, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def test_parse_stream_counts_deltas_without_usage() -> None:
    chunks = [b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\ndata: {"choi',
              b'ces":[{"index":0,"delta":{"content":"Take"}}]}\n\n',
              b'data: {"choices":[{"index":0,"delta":{"content":" care"},"finish_reason":"length"}]}\n\n',
              b"data: [DONE]\n\n"]
    assert parse_stream(chunks) == ("Take care", "length", None, 2)


@pytest.mark.parametrize("row_process", [False, True], ids=["rows-in-thread", "rows-in-child"])
async def test_batches_are_written_redacted_and_drained(tmp_path: Path, row_process: bool) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'log.db'}")
    init_db(engine)
    log = TrafficLog(engine, tmp_path / "spool", GatewayMetrics(), max_queue=1000, batch_size=50,
                     flush_interval_s=0.05, row_processes=int(row_process))
    log.start()
    for i in range(120):
        log.submit(record(i, sampled=i % 10 == 0))
    child = log.rows_in
    await log.drain()
    assert count(engine) == 120 and log.writer.written == 120 and log.dropped == 0
    assert (child is not None and child.restarts == 0) is row_process
    with Session(engine) as session:
        row = session.get(Exchange, "ex00000010")
    assert row is not None and row.sampled and row.judge_state == "pending"
    assert row.request_messages == [{"role": "user", "content": "q10 my SSN is [SSN]"}]
    assert row.response_text == "answer 10, call [PHONE]"
    assert row.request_params == {"model": "assistant", "temperature": 0.2}


async def test_full_queue_drops_and_counts(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'log.db'}")
    init_db(engine)
    metrics = GatewayMetrics()
    log = TrafficLog(engine, tmp_path / "spool", metrics, max_queue=10, batch_size=100, flush_interval_s=10)
    for i in range(15):  # the writer is not running: the queue fills up
        log.submit(record(i))
    assert log.depth == 10 and log.dropped == 5
    assert b"careloop_traffic_log_dropped_total 5.0" in metrics.render()
    assert b"careloop_traffic_log_queue_depth 10.0" in metrics.render()


async def test_store_down_spools_then_replays_sqlite(tmp_path: Path) -> None:
    down = make_engine(f"postgresql://careloop@127.0.0.1:{free_port()}/nowhere",
                       connect_args={"connect_timeout": 1})
    up = make_engine(f"sqlite:///{tmp_path / 'log.db'}")
    init_db(up)
    spool = tmp_path / "spool"
    log = TrafficLog(down, spool, GatewayMetrics(), batch_size=20, flush_interval_s=0.05)
    log.start()
    for i in range(50):
        log.submit(record(i))
    await wait_for(lambda: log.writer.spooled == 50)
    assert not log.writer.store_ok
    spooled = b"".join(p.read_bytes() for p in spool.glob("*.jsonl"))
    assert b"123-45-6789" not in spooled and b"[SSN]" in spooled  # the spool holds redacted rows only

    log.writer.engine = up  # the store is reachable again
    for i in range(50, 60):
        log.submit(record(i))
    await wait_for(lambda: count(up) == 60)
    await log.drain()
    assert log.writer.store_ok and not list(spool.glob("*.jsonl"))


@pytest.mark.postgres
async def test_store_down_spools_then_replays_postgres(tmp_path: Path, pg_url: str) -> None:
    direct = make_engine(pg_url)
    init_db(direct)
    with direct.begin() as conn:
        conn.exec_driver_sql("DELETE FROM verdict")  # other tests share the session database
        conn.exec_driver_sql("DELETE FROM exchange")
    forwarder = Forwarder()
    via = make_engine(pg_url.replace("127.0.0.1:5432", f"127.0.0.1:{forwarder.port}"),
                      connect_args={"connect_timeout": 1})
    log = TrafficLog(via, tmp_path / "spool", GatewayMetrics(), batch_size=20, flush_interval_s=0.05)
    log.start()
    for i in range(30):  # PostgreSQL is unreachable through the closed port
        log.submit(record(i))
    await wait_for(lambda: log.writer.spooled == 30)
    assert count(direct) == 0
    await forwarder.open()  # ... and now it is back
    for i in range(30, 40):
        log.submit(record(i))
    await wait_for(lambda: count(direct) == 40)
    await log.drain()
    assert not list((tmp_path / "spool").glob("*.jsonl"))
    via.dispose()
    await forwarder.close()
    direct.dispose()


async def test_backpressure_waits_for_the_writer_instead_of_dropping(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'log.db'}")
    init_db(engine)
    metrics = GatewayMetrics()
    log = TrafficLog(engine, tmp_path / "spool", metrics, max_queue=40, batch_size=5, flush_interval_s=0.01)
    log.start()
    for i in range(38):
        log.submit(record(i))
    assert log.depth > log.high_water
    await log.wait_for_room()
    assert log.depth <= log.high_water and log.dropped == 0
    assert b"careloop_traffic_log_backpressure_total 1.0" in metrics.render()
    await log.drain()
    assert count(engine) == 38


def poisoned(i: int, kind: str) -> Record:
    """A record whose row the store refuses: usage beyond any integer column, or a NUL byte (PostgreSQL)."""
    r = record(i)
    if kind == "bigint":
        r.response = orjson.dumps({"choices": [{"index": 0, "message": {"content": "ok"}, "finish_reason": "stop"}],
                                   "usage": {"prompt_tokens": 2**63 + 5, "completion_tokens": 1}})
    else:  # a rejected request whose model name holds a NUL byte
        r.status, r.response, r.error = 404, None, "the model 'gpt\x00x' does not exist"
        r.request = {"model": "gpt\x00x", "messages": [{"role": "user", "content": "a\x00b"}]}
    return r


async def poison_run(engine: Engine, tmp_path: Path, kinds: list[str]) -> TrafficLog:
    metrics = GatewayMetrics()
    log = TrafficLog(engine, tmp_path / "spool", metrics, batch_size=100, flush_interval_s=0.05,
                     quarantine_dir=tmp_path / "quarantine")
    log.start()
    for i in range(300):
        log.submit(poisoned(i, kinds[(i // 50) % len(kinds)]) if i % 50 == 7 else record(i))
    await log.drain()
    return log


async def test_poison_rows_are_quarantined_alone_sqlite(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'log.db'}")
    init_db(engine)
    log = await poison_run(engine, tmp_path, ["bigint"])
    assert count(engine) == 294 and log.quarantine.rows == 6 and log.writer.store_ok
    assert b"careloop_traffic_quarantined_total 6.0" in log.metrics.render()
    lines = [orjson.loads(line) for p in (tmp_path / "quarantine").glob("rows-*.jsonl")
             for line in p.read_bytes().splitlines()]
    assert len(lines) == 6 and all("Overflow" in q["reason"] or "int" in q["reason"] for q in lines)
    assert all("123-45-6789" not in orjson.dumps(q).decode() for q in lines)  # redacted there too
    assert not list((tmp_path / "spool").glob("*.jsonl"))


@pytest.mark.postgres
async def test_poison_rows_are_quarantined_alone_postgres(tmp_path: Path, pg_url: str) -> None:
    engine = make_engine(pg_url)
    init_db(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM verdict")
        conn.exec_driver_sql("DELETE FROM exchange")
    log = await poison_run(engine, tmp_path, ["bigint", "nul"])
    assert count(engine) == 294 and log.quarantine.rows == 6 and log.writer.store_ok
    reasons = [orjson.loads(line)["reason"] for p in (tmp_path / "quarantine").glob("rows-*.jsonl")
               for line in p.read_bytes().splitlines()]
    assert any("NUL" in r for r in reasons) and any("range" in r or "Numeric" in r for r in reasons)
    engine.dispose()


async def test_replay_moves_past_a_bad_spool_file(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'log.db'}")
    init_db(engine)
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "exchanges-1-1.jsonl").write_bytes(b"\xff\xfe not json\n{\"id\": 1}\n")
    (spool / "exchanges-2-1.jsonl").mkdir()  # unreadable as a file
    log = TrafficLog(engine, spool, GatewayMetrics(), batch_size=10, flush_interval_s=0.05,
                     quarantine_dir=tmp_path / "quarantine")
    log.writer.spool([build_row(record(i)) for i in range(5)])  # a good file after the bad ones
    log.start()
    log.submit(record(99))
    await wait_for(lambda: count(engine) == 6)
    await log.drain()
    assert not list(spool.glob("exchanges-*.jsonl"))
    assert log.quarantine.rows == 2 and list((tmp_path / "quarantine" / "files").iterdir())


async def test_a_dead_gateways_wal_is_stored_at_start(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'log.db'}")
    init_db(engine)
    key = b"s" * 32
    first = TrafficLog(engine, tmp_path / "spool", GatewayMetrics(), wal_dir=tmp_path / "wal", wal_key=key)
    first.start()
    for i in range(40):
        first.submit(record(i))
    assert first._task is not None
    first._task.cancel()  # the process "dies": nothing written, the WAL folder stays (and its lock is let go)
    assert first.wal is not None
    os.close(first.wal._lock_fd)
    assert count(engine) == 0
    second = TrafficLog(engine, tmp_path / "spool", GatewayMetrics(), wal_dir=tmp_path / "wal", wal_key=key)
    second.start()
    await wait_for(lambda: count(engine) == 40)
    await second.drain()
    assert second.recovered == 40
    assert not list((tmp_path / "wal").iterdir())  # replayed, then removed; the live one closed cleanly
