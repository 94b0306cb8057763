"""A person's label recorded while retention runs is never lost and never left without its exchange: between two
day-partition drops, between a batch's pick and its deletes, with the label's transaction or the purge's first;
on SQLite and the real PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import Engine

from careloop.core.migrations import upgrade
from careloop.core.retention import day_partitions, purge
from careloop.core.schema import utcnow
from careloop.core.settings import RetentionSettings
from careloop.core.store import insert_exchanges, make_engine
from careloop.monitor.review import ReviewError, record_human_verdict
from tests.core.test_partitions import row

KEEP_A_YEAR = RetentionSettings(exchange_days=365, raw_text_days=None, batch_size=10, pause_s=0)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store at head; on PostgreSQL old rows land in the default partition, so the batched deletes take them."""
    sqlite = f"sqlite:///{tmp_path / 'store.db'}"
    url = sqlite if request.param == "sqlite" else str(request.getfixturevalue("fresh_pg"))
    upgrade(url)
    return url


@contextmanager
def after(engine: Engine, starts: tuple[str, ...], action: Callable[[], None]) -> Iterator[list[str]]:
    """Run `action` once, right after the first statement on `engine` that starts with one of `starts`."""
    fired: list[str] = []

    def hook(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        if not fired and statement.lstrip().startswith(starts):
            fired.append(statement)
            action()

    event.listen(engine, "after_cursor_execute", hook)
    try:
        yield fired
    finally:
        event.remove(engine, "after_cursor_execute", hook)


class Beside:
    """`call` in a thread started by `start`, waited for at most `wait_s` there; its result or error kept."""

    def __init__(self, call: Callable[[], object], wait_s: float) -> None:
        self.call, self.wait_s = call, wait_s
        self.result: object = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        try:
            self.result = self.call()
        except BaseException as exc:
            self.error = exc

    def start(self) -> None:
        self.thread.start()
        self.thread.join(self.wait_s)

    def finish(self) -> None:
        self.thread.join(60)
        assert not self.thread.is_alive()


def _state(engine: Engine, exchange_id: str) -> tuple[bool, int, int]:
    """(the exchange is there, its human verdicts, verdicts in the store without their exchange)."""
    with engine.connect() as conn:
        there = conn.execute(text("SELECT count(*) FROM exchange WHERE id = :i"), {"i": exchange_id}).scalar_one()
        human = conn.execute(text("SELECT count(*) FROM verdict WHERE exchange_id = :i AND judge = 'human'"),
                             {"i": exchange_id}).scalar_one()
        orphans = conn.execute(text("SELECT count(*) FROM verdict v WHERE NOT EXISTS"
                                    " (SELECT 1 FROM exchange e WHERE e.id = v.exchange_id)")).scalar_one()
    return bool(there), int(human), int(orphans)


def _old_rows(engine: Engine, n: int = 5, age_days: int = 400) -> list[str]:
    ids = [f"old{i}" for i in range(n)]
    insert_exchanges(engine, [row(ident, utcnow() - timedelta(days=age_days, minutes=i))
                              for i, ident in enumerate(ids)])
    return ids


@pytest.mark.postgres
def test_a_label_recorded_between_two_day_drops_keeps_its_exchange(fresh_pg: str) -> None:
    """The labelled exchanges are read in each partition's own transaction, not once before the first drop."""
    upgrade(fresh_pg)
    engine = make_engine(fresh_pg)
    days = [utcnow() - timedelta(days=age) for age in (400, 399)]
    with engine.begin() as conn:
        conn.execute(text("SELECT careloop_ensure_day_partitions(:a, :b)"), {"a": days[0].date(), "b": days[1].date()})
    insert_exchanges(engine, [row(f"d{d}n{i}", day + timedelta(seconds=i)) for d, day in enumerate(days)
                              for i in range(3)])
    labelled: list[str] = []

    def label_between(_s: float) -> None:  # the purge's pause after its first drop
        if not labelled:
            labelled.append(record_human_verdict(engine, "d1n2", 1, "Caution", reviewer="ana").exchange_id)

    report = purge(engine, KEEP_A_YEAR, sleep=label_between)
    assert labelled == ["d1n2"] and len(report.partitions_dropped) == 4
    assert _state(engine, "d1n2") == (True, 1, 0), "the label and its exchange survive"
    assert report.labelled_moved == 1
    with engine.connect() as conn:
        assert conn.execute(text("SELECT id FROM exchange")).scalars().all() == ["d1n2"]
    assert not {d.date() for d in days} & set(day_partitions(engine, "exchange"))
    engine.dispose()


def test_a_label_recorded_between_a_batch_pick_and_its_deletes_is_kept(store_url: str) -> None:
    """The batch picked the exchange as unlabelled; the label commits before its deletes, which read again."""
    engine, reviewer = make_engine(store_url), make_engine(store_url)
    _old_rows(engine)
    review = Beside(lambda: record_human_verdict(reviewer, "old3", 0, "Accept"), wait_s=30)
    with after(engine, ("SELECT exchange.id",), review.start) as fired:
        report = purge(engine, KEEP_A_YEAR, sleep=lambda _s: None)
    review.finish()
    assert fired and review.error is None
    assert report.exchanges_deleted == 4
    assert _state(engine, "old3") == (True, 1, 0)
    engine.dispose()
    reviewer.dispose()


def test_a_purge_batch_waits_for_a_label_being_written(store_url: str) -> None:
    """The label's transaction writes first: the purge's batch waits for its commit and then keeps the exchange."""
    engine, reviewer = make_engine(store_url), make_engine(store_url)
    _old_rows(engine)
    with reviewer.connect():
        pass  # connected: the hook below sees only the label's statements
    cleanup = Beside(lambda: purge(engine, KEEP_A_YEAR, sleep=lambda _s: None), wait_s=1.0)
    with after(reviewer, ("DELETE FROM verdict", "SELECT exchange"), cleanup.start) as fired:
        record_human_verdict(reviewer, "old1", 2, "Refuse")
    cleanup.finish()
    assert fired and cleanup.error is None
    assert _state(engine, "old1") == (True, 1, 0)
    assert getattr(cleanup.result, "exchanges_deleted", None) == 4
    engine.dispose()
    reviewer.dispose()


def test_a_label_written_during_a_purge_batch_finds_its_exchange_gone(store_url: str) -> None:
    """The purge's batch goes first: the label waits for its commit, then finds no exchange and stores nothing."""
    engine, reviewer = make_engine(store_url), make_engine(store_url)
    _old_rows(engine)
    review = Beside(lambda: record_human_verdict(reviewer, "old2", 0, "Accept"), wait_s=1.0)
    with after(engine, ("LOCK TABLE verdict", "DELETE FROM verdict"), review.start) as fired:
        report = purge(engine, KEEP_A_YEAR, sleep=lambda _s: None)
    review.finish()
    assert fired and report.exchanges_deleted == 5
    assert isinstance(review.error, ReviewError) and "no exchange" in str(review.error)
    assert _state(engine, "old2") == (False, 0, 0)
    engine.dispose()
    reviewer.dispose()
