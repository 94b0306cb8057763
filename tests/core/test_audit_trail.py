"""The audit trail: entries in order with who/what/why, filters, unknown actions refused, `careloop audit log`."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from careloop.core.audit_trail import Actor, entries, record
from careloop.core.settings import Settings
from careloop.core.store import init_db, make_engine


def test_record_and_filter(settings: Settings) -> None:
    engine = make_engine(settings.database_url or "")
    init_db(engine)
    ana, bo = Actor("ana", "approver"), Actor("bo", "reviewer")
    record(engine, bo, "label", "ex1", "looks fine", {"harm_level": 0})
    record(engine, ana, "approve", "smollm2-135m-safety-v1", "canary clean")
    record(engine, ana, "rollback", "smollm2-135m-safety-v1", "complaints")
    rows = entries(engine)
    assert [(r.actor, r.role, r.action, r.target) for r in rows] == [
        ("ana", "approver", "rollback", "smollm2-135m-safety-v1"),
        ("ana", "approver", "approve", "smollm2-135m-safety-v1"),
        ("bo", "reviewer", "label", "ex1")]
    assert rows[-1].details == {"harm_level": 0} and rows[-1].reason == "looks fine"
    assert rows[0].created_at >= rows[-1].created_at
    assert [r.action for r in entries(engine, actor="ana", limit=1)] == ["rollback"]
    assert [r.actor for r in entries(engine, action="label")] == ["bo"]
    assert [r.action for r in entries(engine, before_id=rows[0].id)] == ["approve", "label"]
    with pytest.raises(ValueError, match="unknown audit action"):
        record(engine, ana, "aprove", "x")


def test_audit_log_cli(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from careloop.cli import app
    from careloop.core.migrations import upgrade

    upgrade(settings.database_url or "")
    engine = make_engine(settings.database_url or "")
    record(engine, Actor("ana", "approver"), "approve", "v1", "canary clean")
    record(engine, Actor("bo", "reviewer"), "label", "ex1")
    monkeypatch.setenv("CARELOOP_HOME", str(settings.home))
    monkeypatch.setenv("CARELOOP_DATABASE_URL", settings.database_url or "")
    out = CliRunner().invoke(app, ["audit", "log"])
    assert out.exit_code == 0, out.output
    assert "canary clean" in out.output and out.output.index("label") < out.output.index("approve")
    out = CliRunner().invoke(app, ["audit", "log", "--json", "--action", "approve"])
    rows = [json.loads(line) for line in out.output.splitlines() if line.startswith("{")]
    assert [(r["actor"], r["action"], r["target"], r["reason"]) for r in rows] == [("ana", "approve", "v1",
                                                                                     "canary clean")]
