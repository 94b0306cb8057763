"""The judge worker: claims, verdicts, retries with backoff, broken judges, stale claims, SKIP LOCKED."""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select as sa_select
from sqlalchemy import update
from sqlmodel import Session, select

from careloop.core.migrations import upgrade
from careloop.core.retention import ensure_partitions
from careloop.core.schema import Exchange, Verdict, utcnow
from careloop.core.store import make_engine
from careloop.monitor.metrics import MonitorMetrics
from careloop.monitor.scoring import safety_score
from careloop.monitor.worker import JudgeWorker, claim_batch, exchange_keys, queue_depth
from tests.monitor._monitor_fixtures import (
    BrokenJudge,
    FlakyJudge,
    RuleJudge,
    add_exchanges,
    exchange_row,
    exchange_states,
    keyword_rule,
    store,
)


@pytest.fixture
def engine(tmp_path: Path):  # type: ignore[no-untyped-def]
    e = store(f"sqlite:///{tmp_path / 'store.db'}")
    yield e
    e.dispose()


def _verdicts(engine) -> list[Verdict]:  # type: ignore[no-untyped-def]
    with Session(engine) as s:
        return list(s.exec(select(Verdict)).all())


async def test_worker_grades_sampled_pending_exchanges_with_every_judge(engine) -> None:  # type: ignore[no-untyped-def]
    ids = add_exchanges(engine, [
        exchange_row("how do I harm someone", "Sure, here is how", target="smollm2-135m"),
        exchange_row("what is aspirin", "sorry, I cannot help", target="adapter-v1"),
    ])
    other = add_exchanges(engine, [exchange_row("not sampled", "x", sampled=False),
                                   exchange_row("already judged", "x", state="done")])
    metrics = MonitorMetrics()
    ref, second = RuleJudge("ref", keyword_rule), RuleJudge("self", lambda i: (0, "Accept"))
    worker = JudgeWorker(engine, {"ref": ref, "self": second}, reference="ref", metrics=metrics, backoff_s=0)
    report = await worker.run_once()
    assert report.claimed == 2 and report.done == 2 and report.verdicts == 4
    states = exchange_states(engine)
    assert [states[i] for i in ids] == ["done", "done"]
    assert states[other[0]] == "none" and states[other[1]] == "done"
    by = {(v.exchange_id, v.judge): v for v in _verdicts(engine)}
    harmful = by[(ids[0], "ref")]
    assert (harmful.harm_level, harmful.response_class, harmful.adapter) == (3, "Accept", "smollm2-135m")
    assert harmful.score == safety_score(3, "Accept") == 0.0
    assert by[(ids[1], "ref")].response_class == "Refuse" and by[(ids[1], "ref")].adapter == "adapter-v1"
    assert metrics.verdicts.labels(judge="ref", adapter="adapter-v1", response_class="Refuse")._value.get() == 1
    assert (await worker.run_once()).claimed == 0
    assert queue_depth(engine) == 0


async def test_a_broken_judge_never_stops_the_others(engine) -> None:  # type: ignore[no-untyped-def]
    add_exchanges(engine, [exchange_row("q", "fine answer") for _ in range(3)])
    metrics = MonitorMetrics()
    broken = BrokenJudge("external")
    worker = JudgeWorker(engine, {"ref": RuleJudge("ref", keyword_rule), "external": broken},
                         reference="ref", metrics=metrics, max_retries=2, backoff_s=0)
    report = await worker.run_once()
    assert report.done == 3
    assert {v.judge for v in _verdicts(engine)} == {"ref"}
    assert broken.calls == 3  # first try + 2 retries
    assert metrics.judge_failures.labels(judge="external", kind="unavailable")._value.get() == 3
    assert "external" not in worker.available()  # cooling off: the next cycles skip it


async def test_failures_are_retried_with_backoff_until_they_succeed(engine) -> None:  # type: ignore[no-untyped-def]
    ids = add_exchanges(engine, [exchange_row("q", "garbled reply"), exchange_row("q2", "fine")])
    flaky = FlakyJudge("ref", keyword_rule, failures=1)
    worker = JudgeWorker(engine, {"ref": flaky}, reference="ref", max_retries=3, backoff_s=0.01)
    report = await worker.run_once()
    # call 1 fails whole, call 2 grades one item and returns None for the garbled one, call 3 grades it
    assert flaky.calls == 3
    assert report.done == 2 and {v.exchange_id for v in _verdicts(engine)} == set(ids)


async def test_reference_judge_down_releases_the_work_then_gives_up(engine) -> None:  # type: ignore[no-untyped-def]
    ids = add_exchanges(engine, [exchange_row("q", "a")])
    other = RuleJudge("self", keyword_rule)
    worker = JudgeWorker(engine, {"ref": BrokenJudge("ref"), "self": other}, reference="ref",
                         max_retries=2, backoff_s=0, cooloff_max_s=0)
    first = await worker.run_once()
    assert first.released == 1 and exchange_states(engine)[ids[0]] == "pending"
    assert [v.judge for v in _verdicts(engine)] == ["self"]  # the healthy judge's verdict is kept
    second = await worker.run_once()
    assert second.failed == 1 and exchange_states(engine)[ids[0]] == "failed"
    assert other.calls == 1  # not asked again for an exchange it already graded


async def test_stale_claims_are_taken_again_and_fresh_ones_are_not(engine) -> None:  # type: ignore[no-untyped-def]
    stale, fresh = add_exchanges(engine, [exchange_row("a", "x"), exchange_row("b", "y")])
    with engine.begin() as conn:
        conn.execute(update(Exchange).where(Exchange.id == stale).values(  # type: ignore[arg-type]
            judge_state="claimed", claimed_by="dead-worker", claimed_at=utcnow() - timedelta(seconds=600)))
        conn.execute(update(Exchange).where(Exchange.id == fresh).values(  # type: ignore[arg-type]
            judge_state="claimed", claimed_by="live-worker", claimed_at=utcnow()))
    claimed = claim_batch(engine, "me", 10, claim_timeout_s=300)
    assert [c.id for c in claimed] == [stale]


async def test_exchanges_without_a_response_are_skipped(engine) -> None:  # type: ignore[no-untyped-def]
    ids = add_exchanges(engine, [exchange_row("q", None)])
    judge = RuleJudge("ref", keyword_rule)
    report = await JudgeWorker(engine, {"ref": judge}, reference="ref").run_once()
    assert report.skipped == 1 and judge.calls == 0
    assert exchange_states(engine)[ids[0]] == "skipped"


async def test_a_judge_returning_nonsense_counts_as_an_item_failure(engine) -> None:  # type: ignore[no-untyped-def]
    add_exchanges(engine, [exchange_row("q", "x")])
    metrics = MonitorMetrics()
    bad = RuleJudge("ref", lambda i: (7, "Maybe"))
    worker = JudgeWorker(engine, {"ref": bad}, reference="ref", max_retries=2, backoff_s=0, metrics=metrics)
    report = await worker.run_once()
    assert report.verdicts == 0 and report.released == 1
    assert metrics.judge_failures.labels(judge="ref", kind="item")._value.get() == 3


@pytest.mark.postgres
async def test_concurrent_workers_on_postgres_never_share_work(pg_url: str) -> None:
    engine = store(pg_url)
    try:
        with engine.begin() as conn:
            conn.execute(Verdict.metadata.tables["verdict"].delete())
            conn.execute(Exchange.metadata.tables["exchange"].delete())
        add_exchanges(engine, [exchange_row(f"q{i}", "ok") for i in range(120)])
        claims: list[list[str]] = []
        lock = threading.Lock()

        def claimer(n: int) -> None:
            got = claim_batch(engine, f"w{n}", 20, 300)
            with lock:
                claims.append([c.id for c in got])

        threads = [threading.Thread(target=claimer, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        flat = [i for c in claims for i in c]
        assert len(flat) == 80 and len(set(flat)) == 80  # disjoint
        # Now two full workers drain the rest concurrently: one verdict per exchange and judge.
        with engine.begin() as conn:
            conn.execute(update(Exchange).values(judge_state="pending", claimed_by=None, claimed_at=None))
        workers = [JudgeWorker(engine, {"ref": RuleJudge("ref", keyword_rule)}, reference="ref", batch_size=7,
                               worker_id=f"w{n}") for n in range(3)]
        await asyncio.gather(*(w.drain() for w in workers))
        verdicts = _verdicts(engine)
        assert len(verdicts) == 120 and len({v.exchange_id for v in verdicts}) == 120
        assert sum(w.totals.done for w in workers) == 120
        assert all(w.totals.done > 0 for w in workers)
    finally:
        engine.dispose()


@pytest.mark.postgres
async def test_on_day_partitions_the_worker_reads_only_the_claimed_days(fresh_pg: str) -> None:
    upgrade(fresh_pg)  # as `careloop db upgrade` leaves a PostgreSQL store: exchange and verdict by day
    engine = make_engine(fresh_pg)
    try:
        now = utcnow()
        ensure_partitions(engine, now=now - timedelta(days=10), days_ahead=11)
        judged = [exchange_row(f"old {i}", "ok", state="done", created_at=now - timedelta(days=5, minutes=i))
                  for i in range(5)]
        waiting = [exchange_row(f"how to harm {i}", "sure", created_at=now - timedelta(days=2, minutes=i))
                   for i in range(4)]
        add_exchanges(engine, judged + waiting)
        claimed = claim_batch(engine, "w1", 10, 300)
        assert {c.id for c in claimed} == {r["id"] for r in waiting}
        assert {c.created_at for c in claimed} == {r["created_at"] for r in waiting}
        lookup = sa_select(Exchange.id).where(*exchange_keys(engine, [c.id for c in claimed],
                                                              [c.created_at for c in claimed]))
        sql = str(lookup.compile(engine, compile_kwargs={"literal_binds": True}))
        with engine.connect() as conn:
            plan = "\n".join(r[0] for r in conn.exec_driver_sql("EXPLAIN " + sql))
        day = (now - timedelta(days=2)).strftime("%Y%m%d")
        read = {w for w in plan.replace("(", " ").split() if w.startswith("exchange_p") or w == "exchange_default"}
        assert read and all(name.startswith(f"exchange_p{day}") for name in read), plan  # one day's partition
        with engine.begin() as conn:  # give the claims back; a worker then grades them on the partitioned store
            conn.execute(update(Exchange).values(judge_state="pending", claimed_by=None, claimed_at=None)
                         .where(Exchange.id.in_([c.id for c in claimed])))  # type: ignore[attr-defined]
        worker = JudgeWorker(engine, {"ref": RuleJudge("ref", keyword_rule)}, reference="ref")
        report = await worker.drain()
        assert report.done == 4 and report.verdicts == 4
        assert list(exchange_states(engine).values()).count("done") == 9
    finally:
        engine.dispose()
