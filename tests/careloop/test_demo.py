"""`careloop demo`'s verdict on itself: a run without a promoted adapter is a failure, said in one line."""

from __future__ import annotations

import os
from typing import Any

import pytest
from typer.testing import CliRunner

from careloop import demo
from careloop.cli import app

PROMOTED = {"retrain_run": {"id": 1, "status": "succeeded", "outcome": "promoted", "adapter": "a-v1", "report": {}},
            "decision": {"adapter": "a-v1", "action": "promote", "reason": "not worse"}, "failed_requests": 0}


def test_a_promoted_adapter_with_every_request_served_is_the_result() -> None:
    ok, reason = demo.demo_result(PROMOTED)
    assert ok and reason.startswith("promoted a-v1")


@pytest.mark.parametrize(("change", "says"), [
    ({"retrain_run": None}, "no realignment was triggered"),
    ({"retrain_run": {"id": 3, "status": "failed", "error": "RunError: vLLM does not serve\nTraceback"}},
     "retrain run 3 failed: RunError: vLLM does not serve"),
    ({"retrain_run": {"id": 4, "status": "succeeded", "outcome": "no_gain", "report": {"stop_reason": "2 cycles"}}},
     "registered no adapter (no_gain: 2 cycles)"),
    ({"decision": {"adapter": "a-v1", "action": "rollback", "reason": "worse than stable"}},
     "canary a-v1 rollback: worse than stable"),
    ({"decision": None}, "reached no decision"),
    ({"failed_requests": 2}, "2 requests failed"),
    ({"timeout": "the canary did not decide within the demo's time limit"}, "did not decide"),
])
def test_anything_short_of_a_promotion_fails_with_its_reason(change: dict[str, Any], says: str) -> None:
    ok, reason = demo.demo_result({**PROMOTED, **change})
    assert not ok and says in reason and "\n" not in reason


def test_the_command_exits_non_zero_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    rolled_back = {**PROMOTED, "decision": {"adapter": "a-v1", "action": "rollback", "reason": "worse"}}

    def fake_run(settings: Any, console: Any) -> dict[str, Any]:
        ok, reason = demo.demo_result(rolled_back)
        return {**rolled_back, "result": {"ok": ok, "reason": reason}}

    monkeypatch.setattr(demo, "run_demo", fake_run)
    monkeypatch.setattr("careloop.core.sigterm.exit_on_sigterm", lambda: None)
    out = CliRunner().invoke(app, ["demo"])
    assert out.exit_code == 1
    assert "careloop demo failed: canary a-v1 rollback: worse" in out.output
    monkeypatch.setattr(demo, "run_demo", lambda s, c: {**PROMOTED, "result": {"ok": True, "reason": "promoted"}})
    assert CliRunner().invoke(app, ["demo"]).exit_code == 0


def test_the_demo_s_training_uses_every_core_and_its_retrain_process_sees_it(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from careloop.core.settings import Settings, load_settings
    from careloop.stack import careloop_env

    settings = Settings(home=tmp_path)
    assert settings.retrain.torch_threads == 1  # a retrain beside live traffic leaves vLLM its core
    settings = demo.demo_settings(settings)
    env = careloop_env(settings)  # what the monitor, and the retrain run it launches, start with
    for key in [k for k in os.environ if k.startswith("CARELOOP_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("CARELOOP_CONFIG_FILE", env["CARELOOP_CONFIG_FILE"])
    assert load_settings().retrain.torch_threads == settings.demo.train_threads == 0
