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
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, text, update
from sqlalchemy.engine import Engine
from sqlmodel import col

from careloop.core.schema import (
    FINISHED_RUN_STATES,
    AdapterEvent,
    Exchange,
    RetrainRun,
    TriggerEvent,
    Verdict,
    utcnow,
)
from careloop.core.settings import RetentionSettings

log = logging.getLogger("careloop.retention")
HUMAN = "human"  # the judge name of a person's label (careloop/monitor/review.py)


@dataclass
class PurgeReport:
    """What one purge did."""

    text_purged: int = 0
    exchanges_deleted: int = 0
    verdicts_deleted: int = 0
    audit_deleted: dict[str, int] = field(default_factory=dict)
    rate_windows_deleted: int = 0
    batches: int = 0
    seconds: float = 0.0


def purge_windows(engine: Engine, before: int) -> int:
    """Delete the rate windows that started before `before` (epoch seconds)."""
    with engine.begin() as conn:
        return int(conn.execute(text("DELETE FROM rate_window WHERE window_start < :b"), {"b": before}).rowcount)


def _labelled() -> Any:
    """Ids of exchanges a person labelled."""
    return select(col(Verdict.exchange_id)).where(col(Verdict.judge) == HUMAN)


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

    if r.exchange_days is not None:
        pick = select(x_id).where(x_created < now - timedelta(days=r.exchange_days))
        if r.keep_labelled:
            pick = pick.where(x_id.not_in(_labelled()))

        def drop(conn: Any, ids: list[Any]) -> int:
            report.verdicts_deleted += conn.execute(delete(Verdict).where(
                col(Verdict.exchange_id).in_(ids))).rowcount
            return int(conn.execute(delete(Exchange).where(x_id.in_(ids))).rowcount)

        report.exchanges_deleted, n = _batches(engine, pick.order_by(x_created), drop, r.batch_size, r.pause_s,
                                               sleep)
        report.batches += n

    if r.raw_text_days is not None:
        pick = select(x_id).where(x_created < now - timedelta(days=r.raw_text_days),
                                  col(Exchange.text_purged_at).is_(None))
        if r.keep_labelled:
            pick = pick.where(x_id.not_in(_labelled()))

        def blank(conn: Any, ids: list[Any]) -> int:
            conn.execute(update(Exchange).where(x_id.in_(ids)).values(
                request_messages=[], request_params={}, response_text=None, text_purged_at=now))
            return len(ids)

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
