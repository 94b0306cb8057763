"""Retention: blank old raw text, delete old exchanges with their verdicts, optionally old audit records.

Runs in batches (`retention.batch_size` rows per short transaction, `retention.pause_s` between them) so the
gateway's inserts never wait long on SQLite's write lock or on PostgreSQL row locks; the exchange and verdict
queries use the `created_at` indexes. Exchanges a person labelled (a verdict of judge `human`) are kept, text
and all, while `retention.keep_labelled` is on: they are the judges' calibration set (κ against humans, the
distilled judge's training data).

Stages, each with its own age:
1. rows (`exchange_days`, 365): the exchange and its verdicts deleted;
2. raw text (`raw_text_days`, 30): request messages, parameters and response text blanked, `text_purged_at`
   set; ids, times, target, key name, tokens, status and latency stay for the audits;
3. audit (`audit_days`, never by default): trigger events, adapter events and finished retrain runs.
Old rate-limit windows (older than a day) are deleted too.

On PostgreSQL after revision 0006, `exchange` and `verdict` are partitioned by UTC day: each run first creates
today's and the next days' partitions, then the row stage drops each whole day past `exchange_days` (detach +
drop, under a short `lock_timeout` retried, so waiting inserts are held up only that long): that day's labelled
exchanges are copied out first and written back, where they land in the default partition; that day's verdict
partition goes the same way, keeping the labelled exchanges' verdicts. What remains older (rows in the default
partition) goes through the batched deletes as on SQLite.

No label is lost or left without its exchange: each partition change and each delete or blanking batch decides
which exchanges are labelled inside its own transaction, after taking the lock that holds up every other verdict
write until it commits (`LOCK TABLE verdict IN SHARE MODE` on PostgreSQL, whose READ COMMITTED statements take
their snapshot after their locks; on SQLite the write lock, which the batch's first statement takes, since the
Python driver runs a batch's reads before that outside any transaction). `record_human_verdict` writes to
`verdict` before it looks for the exchange, so it either commits before the purge decides or sees its result.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import col

from careloop.core.schema import (
    FINISHED_RUN_STATES,
    HUMAN,
    AdapterEvent,
    Exchange,
    RetrainRun,
    ReviewSample,
    TriggerEvent,
    Verdict,
    utcnow,
)
from careloop.core.settings import RetentionSettings
from careloop.core.store import is_sqlite

log = logging.getLogger("careloop.retention")
DAYS_AHEAD = 7  # day partitions created ahead of today on each run
LOCK_TIMEOUT_MS = 200  # the longest an insert waits behind one partition change
LOCK_TRIES = 25  # attempts at a partition change that keeps timing out on its lock
PARTITIONED = ("exchange", "verdict")


@dataclass
class PurgeReport:
    """What one purge did."""

    text_purged: int = 0
    exchanges_deleted: int = 0
    verdicts_deleted: int = 0
    audit_deleted: dict[str, int] = field(default_factory=dict)
    rate_windows_deleted: int = 0
    partitions_created: int = 0
    partitions_dropped: list[str] = field(default_factory=list)
    labelled_moved: int = 0  # labelled exchanges (and their verdicts) written back from dropped days
    batches: int = 0
    seconds: float = 0.0


def purge_windows(engine: Engine, before: int) -> int:
    """Delete the rate windows that started before `before` (epoch seconds)."""
    with engine.begin() as conn:
        return int(conn.execute(text("DELETE FROM rate_window WHERE window_start < :b"), {"b": before}).rowcount)


def day_partitioned(engine: Engine) -> bool:
    """Whether the store's exchange table is partitioned by day (PostgreSQL after revision 0006)."""
    if is_sqlite(str(engine.url)):
        return False
    with engine.connect() as conn:
        return conn.execute(text("SELECT relkind FROM pg_class WHERE relname = 'exchange'")).scalar() == "p"


def _locked(engine: Engine, act: Callable[[Any], int], sleep: Callable[[float], None], pause_s: float) -> int:
    """Run `act` in a transaction whose locks wait at most LOCK_TIMEOUT_MS, retrying on a timeout."""
    for attempt in range(LOCK_TRIES):
        try:
            with engine.begin() as conn:
                conn.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT_MS}ms'"))
                return act(conn)
        except OperationalError as exc:
            if "lock timeout" not in str(exc) or attempt == LOCK_TRIES - 1:
                raise
            sleep(max(pause_s, 0.05))
    raise AssertionError("unreachable")


def ensure_partitions(engine: Engine, now: datetime | None = None, days_ahead: int = DAYS_AHEAD,
                      sleep: Callable[[float], None] = time.sleep) -> int:
    """Create the exchange and verdict day partitions from today to `days_ahead` days on; how many were new."""
    today = (now or utcnow()).astimezone(UTC).date()

    def act(conn: Any) -> int:
        return int(conn.execute(text("SELECT careloop_ensure_day_partitions(:a, :b)"),
                                {"a": today, "b": today + timedelta(days=days_ahead)}).scalar_one())

    return _locked(engine, act, sleep, 0.05)


def day_partitions(engine: Engine, table: str) -> dict[date, str]:
    """The day partitions of `table` (exchange or verdict) by their UTC day."""
    with engine.connect() as conn:
        names = conn.execute(text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = CAST(:t AS regclass)"), {"t": table}).scalars().all()
    days = {}
    for name in names:
        m = re.fullmatch(rf"{table}_p(\d{{8}})", name)
        if m:
            days[datetime.strptime(m.group(1), "%Y%m%d").date()] = name
    return days


def hold_verdicts(conn: Any) -> None:
    """Hold up every other verdict write until this transaction ends (PostgreSQL; SQLite writers serialize)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("LOCK TABLE verdict IN SHARE MODE"))


def drop_expired_days(engine: Engine, before: datetime, keep_labelled: bool, report: PurgeReport,
                      sleep: Callable[[float], None] = time.sleep, pause_s: float = 0.05) -> None:
    """Drop the exchange, then the verdict, day partitions that end by `before`, keeping labelled exchanges.

    Rows of a kept exchange (and its verdicts) are copied out before the partition is detached and inserted again
    in the same transaction; with their day no longer covered they go to the default partition. Which exchanges
    are labelled is read in that transaction, under `hold_verdicts`. Review samples of the dropped exchanges go
    too.
    """
    expired = [(table, part) for table in PARTITIONED for day, part in sorted(day_partitions(engine, table).items())
               if datetime.combine(day + timedelta(days=1), datetime.min.time(), UTC) <= before]
    for table, part in expired:

        def act(conn: Any, table: str = table, part: str = part) -> int:
            hold_verdicts(conn)
            labelled = (f"EXISTS (SELECT 1 FROM verdict h WHERE h.judge = :human AND h.exchange_id ="
                        f" p.{'id' if table == 'exchange' else 'exchange_id'})") if keep_labelled else "false"
            conn.execute(text(f"CREATE TEMP TABLE careloop_keep ON COMMIT DROP AS SELECT * FROM {part} p"
                              f" WHERE {labelled}"), {"human": HUMAN})
            if table == "exchange":
                conn.execute(text(f"DELETE FROM review_sample s USING {part} p WHERE p.id = s.exchange_id"
                                  " AND NOT EXISTS (SELECT 1 FROM careloop_keep k WHERE k.id = p.id)"))
            conn.execute(text(f"ALTER TABLE {table} DETACH PARTITION {part}"))
            moved = conn.execute(text(f"INSERT INTO {table} SELECT * FROM careloop_keep")).rowcount
            conn.execute(text(f"DROP TABLE {part}"))
            return int(moved)

        moved = _locked(engine, act, sleep, pause_s)
        report.partitions_dropped.append(part)
        report.labelled_moved += moved if table == "exchange" else 0
        sleep(pause_s)


def _labelled() -> Any:
    """Ids of exchanges a person labelled."""
    return select(col(Verdict.exchange_id)).where(col(Verdict.judge) == HUMAN)


def _unlabelled(ids: Any, keep_labelled: bool) -> list[Any]:
    """The condition that `ids` are not labelled, re-read by the statement itself (none when labels are not kept)."""
    return [ids.not_in(_labelled())] if keep_labelled else []


def _batches(engine: Engine, pick: Any, act: Callable[[Any, list[Any]], int], batch: int, pause_s: float,
             sleep: Callable[[float], None]) -> tuple[int, int]:
    """Run `act` on batches of ids chosen by `pick` until none are left; (rows acted on, batches)."""
    done = batches = 0
    while True:
        with engine.begin() as conn:
            ids = list(conn.execute(pick.limit(batch)).scalars())
            if not ids:
                return done, batches
            done += act(conn, ids)
        batches += 1
        if len(ids) < batch:
            return done, batches
        sleep(pause_s)


def purge(engine: Engine, r: RetentionSettings, now: datetime | None = None,
          sleep: Callable[[float], None] = time.sleep) -> PurgeReport:
    """Apply the retention settings to the store once."""
    t0 = time.perf_counter()
    now = now or utcnow()
    report = PurgeReport()
    x_id, x_created = col(Exchange.id), col(Exchange.created_at)

    parted = day_partitioned(engine)
    if parted:
        report.partitions_created = ensure_partitions(engine, now, sleep=sleep)
    if r.exchange_days is not None:
        if parted:
            drop_expired_days(engine, now - timedelta(days=r.exchange_days), r.keep_labelled, report, sleep,
                              r.pause_s)
        pick = select(x_id).where(x_created < now - timedelta(days=r.exchange_days))
        if r.keep_labelled:
            pick = pick.where(x_id.not_in(_labelled()))

        def drop(conn: Any, ids: list[Any]) -> int:
            # the pick may be stale: who is labelled is read again by each delete, under hold_verdicts
            hold_verdicts(conn)
            v_ids, s_ids = col(Verdict.exchange_id), col(ReviewSample.exchange_id)
            report.verdicts_deleted += conn.execute(delete(Verdict).where(
                v_ids.in_(ids), *_unlabelled(v_ids, r.keep_labelled))).rowcount
            conn.execute(delete(ReviewSample).where(
                s_ids.in_(ids), *_unlabelled(s_ids, r.keep_labelled)))
            return int(conn.execute(delete(Exchange).where(
                x_id.in_(ids), *_unlabelled(x_id, r.keep_labelled))).rowcount)

        report.exchanges_deleted, n = _batches(engine, pick.order_by(x_created), drop, r.batch_size, r.pause_s,
                                               sleep)
        report.batches += n

    if r.raw_text_days is not None:
        pick = select(x_id).where(x_created < now - timedelta(days=r.raw_text_days),
                                  col(Exchange.text_purged_at).is_(None))
        if r.keep_labelled:
            pick = pick.where(x_id.not_in(_labelled()))

        def blank(conn: Any, ids: list[Any]) -> int:
            hold_verdicts(conn)
            return int(conn.execute(update(Exchange).where(
                x_id.in_(ids), *_unlabelled(x_id, r.keep_labelled)).values(
                request_messages=[], request_params={}, response_text=None, text_purged_at=now)).rowcount)

        report.text_purged, n = _batches(engine, pick.order_by(x_created), blank, r.batch_size, r.pause_s, sleep)
        report.batches += n

    if r.audit_days is not None:
        cutoff = now - timedelta(days=r.audit_days)
        for table in (TriggerEvent, AdapterEvent, RetrainRun):
            t_id, t_created = col(table.id), col(table.created_at)  # type: ignore[attr-defined]
            audit_pick: Any = select(t_id).where(t_created < cutoff)
            if table is RetrainRun:
                audit_pick = audit_pick.where(col(RetrainRun.status).in_(FINISHED_RUN_STATES))

            def drop_audit(conn: Any, ids: list[Any], table: Any = table, t_id: Any = t_id) -> int:
                return int(conn.execute(delete(table).where(t_id.in_(ids))).rowcount)

            deleted, n = _batches(engine, audit_pick.order_by(t_created), drop_audit, r.batch_size, r.pause_s, sleep)
            report.audit_deleted[str(table.__tablename__)] = deleted
            report.batches += n

    report.rate_windows_deleted = purge_windows(engine, int(now.timestamp()) - 86400)
    report.seconds = time.perf_counter() - t0
    return report
