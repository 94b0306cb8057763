"""`careloop adapters list | promote | rollback` and `careloop eval`'s input checks, against a temp store."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from careloop.cli import app
from careloop.core import registry
from careloop.core.settings import Settings
from careloop.core.store import init_db, make_engine


@pytest.fixture
def env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("CARELOOP_HOME", str(settings.home))
    monkeypatch.setenv("CARELOOP_DATABASE_URL", settings.database_url or "")
    monkeypatch.setenv("COLUMNS", "200")
    return settings


def test_adapters_promote_list_and_rollback(env: Settings) -> None:
    engine = make_engine(env.database_url or "")
    init_db(engine)
    registry.register_adapter(engine, "m-safety-v1", "/a/v1", "m", 1, metrics={"safety_score": 0.8})
    runner = CliRunner()
    assert runner.invoke(app, ["adapters", "promote", "m-safety-v1"]).exit_code == 0
    out = runner.invoke(app, ["adapters", "list"])
    assert out.exit_code == 0 and "m-safety-v1" in out.output and "stable" in out.output
    assert runner.invoke(app, ["adapters", "promote", "missing"]).exit_code == 2
    assert runner.invoke(app, ["adapters", "rollback"]).exit_code == 0
    assert registry.get_adapter(engine, "m-safety-v1").status == "rolled_back"  # type: ignore[union-attr]
    assert runner.invoke(app, ["adapters", "rollback"]).exit_code == 1  # nothing left: the base serves
    ev = registry.adapter_events(engine, "m-safety-v1")[0]
    assert ev.action == "rollback" and ev.actor == "operator"


def test_eval_rejects_unknown_data(env: Settings) -> None:
    out = CliRunner().invoke(app, ["eval", "--data", "no-such-set", "--judge", "distilled"])
    assert out.exit_code == 2 and "neither a file nor one of" in out.output
