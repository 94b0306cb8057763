"""Retention: old raw text blanked, old exchanges and their verdicts deleted in batches, human-labelled
exchanges kept, audit records kept unless asked; on SQLite and the real PostgreSQL; inserts go on meanwhile."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlmodel import Session, col

from careloop.core.migrations import upgrade
from careloop.core.retention import purge
from careloop.core.schema import AdapterEvent, Exchange, RetrainRun, TriggerEvent, Verdict, utcnow
from careloop.core.settings import RetentionSettings
from careloop.core.store import insert_exchanges, make_engine, session_scope
from tests.core.conftest import inserting


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    sqlite = f"sqlite:///{tmp_path / 'store.db'}"
    url = sqlite if request.param == "sqlite" else str(request.getfixturevalue("pg_url"))
    upgrade(url)
    engine = make_engine(url)
    with engine.begin() as conn:
        for table in ("verdict", "exchange", "trigger_event", "adapter_event", "retrain_run"):
            conn.exec_driver_sql(f"DELETE FROM {table}")
    engine.dispose()
    return url


def _row(i: int, age_days: float, prefix: str = "x") -> dict[str, object]:
    return {"id": f"{prefix}{i:08d}", "created_at": utcnow() - timedelta(days=age_days), "public_model": "assistant",
            "target": "smollm2-135m", "role": "stable", "user_key": None,
            "request_messages": [{"role": "user", "content": f"question {i}"}], "request_params": {"max_tokens": 9},
            "response_text": f"answer {i}", "finish_reason": "stop", "prompt_tokens": 5, "completion_tokens": 3,
            "latency_ms": 1.0, "status": 200, "stream": False, "sampled": True, "judge_state": "done",
            "claimed_by": None, "claimed_at": None, "request_id": f"r{i}", "trace_id": None, "key_name": "app",
            "text_purged_at": None}


def test_purge_by_age_keeps_labelled_and_audit(store_url: str) -> None:
    engine = make_engine(store_url)
    # 25 rows a year and a half old, 25 rows 40 days old, 25 fresh; each judged; two old ones labelled.
    rows = [_row(i, 500) for i in range(25)] + [_row(i, 40) for i in range(25, 50)] + \
           [_row(i, 1) for i in range(50, 75)]
    insert_exchanges(engine, rows)
    with session_scope(engine) as s:
        for r in rows:
            s.add(Verdict(exchange_id=str(r["id"]), adapter="smollm2-135m", judge="distilled", harm_level=0,
                          response_class="Accept", score=1.0, created_at=r["created_at"]))
        for ex in ("x00000003", "x00000030"):
            s.add(Verdict(exchange_id=ex, adapter="smollm2-135m", judge="human", harm_level=0,
                          response_class="Accept", score=1.0))
        old = utcnow() - timedelta(days=900)
        s.add(TriggerEvent(rule="safety_floor", kind="breach", created_at=old))
        s.add(AdapterEvent(adapter="a", action="promote", created_at=old))
        s.add(RetrainRun(status="succeeded", created_at=old))
        s.add(RetrainRun(status="running", created_at=old))
    settings = RetentionSettings(batch_size=7, pause_s=0)
    report = purge(engine, settings)
    assert report.exchanges_deleted == 24 and report.verdicts_deleted == 24  # 25 old, one labelled
    assert report.text_purged == 24  # the 40-day-old rows but the labelled one
    assert report.batches >= 8 and report.audit_deleted == {}
    with Session(engine) as s:
        ids = set(s.exec(select(col(Exchange.id))).scalars())  # type: ignore[call-overload]
        assert ids == {"x00000003"} | {f"x{i:08d}" for i in range(25, 75)}
        kept = s.get(Exchange, "x00000003")
        assert kept is not None and kept.response_text == "answer 3"  # labelled: text kept too
        blank = s.get(Exchange, "x00000026")
        assert blank is not None and blank.response_text is None and blank.request_messages == []
        assert blank.text_purged_at is not None and blank.key_name == "app" and blank.completion_tokens == 3
        assert s.get(Exchange, "x00000030").response_text == "answer 30"  # type: ignore[union-attr]
        assert s.get(Exchange, "x00000060").response_text == "answer 60"  # type: ignore[union-attr]
        assert s.exec(select(func.count()).select_from(TriggerEvent)).one()[0] == 1  # type: ignore[call-overload]
    again = purge(engine, settings)
    assert (again.text_purged, again.exchanges_deleted) == (0, 0)
    audit = purge(engine, RetentionSettings(audit_days=365, pause_s=0))
    assert audit.audit_deleted == {"trigger_event": 1, "adapter_event": 1, "retrain_run": 1}  # not the running one
    engine.dispose()


def test_inserts_continue_during_a_purge(store_url: str) -> None:
    engine = make_engine(store_url)
    insert_exchanges(engine, [_row(i, 400) for i in range(3000)])
    with inserting(engine, lambda i: [_row(i * 10 + k, 0, "new") for k in range(10)]) as waits:
        report = purge(engine, RetentionSettings(batch_size=200, pause_s=0.01))
    assert report.exchanges_deleted == 3000 and report.batches >= 15
    assert len(waits) >= 5, "the writer got to insert while the purge ran"
    assert max(waits) < 2.0, f"an insert waited {max(waits):.2f} s"
    with Session(engine) as s:
        assert s.exec(select(func.count()).select_from(Exchange)).one()[0] == 10 * len(waits)  # type: ignore[call-overload]
    engine.dispose()
