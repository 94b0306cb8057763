"""The monitor's scheduled retention job: purges by the settings, one monitor replica at a time (lease)."""

from __future__ import annotations

from datetime import timedelta

from sqlmodel import Session

from careloop.core.schema import Exchange, utcnow
from careloop.core.settings import Settings
from careloop.monitor.loop import MonitorService
from tests.monitor._monitor_fixtures import RuleJudge, add_exchanges, exchange_row, store


def test_retention_job_purges_once_per_lease(settings: Settings) -> None:
    engine = store(settings.database_url or "")
    add_exchanges(engine, [exchange_row("old question", "old answer", ex_id="old", state="done",
                                        created_at=utcnow() - timedelta(days=400)),
                           exchange_row("recent question", "recent answer", ex_id="recent", state="done",
                                        created_at=utcnow() - timedelta(days=31))])
    judges = {"distilled": RuleJudge("distilled", lambda i: (0, "Accept"))}
    first = MonitorService.create(settings, engine=engine, judges=judges, stable_adapter=lambda: "a")
    second = MonitorService.create(settings, engine=engine, judges=judges, stable_adapter=lambda: "a")
    report = first.retention_job()
    assert report is not None and report.exchanges_deleted == 1 and report.text_purged == 1
    assert second.retention_job() is None  # the lease is held by the first replica
    assert first.stats["retention"].runs == 1 and first.stats["retention"].errors == 0
    assert "retention" not in second.stats  # a replica without the lease did not run the job
    with Session(engine) as s:
        assert s.get(Exchange, "old") is None
        recent = s.get(Exchange, "recent")
        assert recent is not None and recent.response_text is None and recent.text_purged_at is not None
    engine.dispose()


def test_a_failing_job_is_counted_and_gives_its_fallback(settings: Settings) -> None:
    engine = store(settings.database_url or "")
    judges = {"distilled": RuleJudge("distilled", lambda i: (0, "Accept"))}
    service = MonitorService.create(settings, engine=engine, judges=judges, stable_adapter=lambda: "a")

    def broken() -> list[int]:
        raise RuntimeError("rules unreadable")

    service.triggers.evaluate = broken  # type: ignore[method-assign]
    assert service.trigger_job() == []
    stat = service.stats["triggers"]
    assert stat.runs == 1 and stat.errors == 1 and stat.last_error == "RuntimeError: rules unreadable"
    engine.dispose()
