"""`careloop config show`: every setting, documented, under the environment variable that really sets it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from typer.testing import CliRunner

from careloop.cli import app
from careloop.config_cli import setting_rows
from careloop.core.settings import Settings, load_settings

ADMIN_TOKEN = "admin-token-very-secret-1234"
UPSTREAM_KEY = "sk-upstream-secret-5678"
JUDGE_KEY = "sk-judge-secret-9012"


@pytest.fixture(autouse=True)
def _clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No CARELOOP_* from the caller's shell; a temp home."""
    for name in list(os.environ):
        if name.startswith("CARELOOP_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CARELOOP_HOME", str(tmp_path / "home"))


def _leaves(model: type[BaseModel], prefix: str = "") -> dict[str, str | None]:
    """Every leaf field of the settings model (walked here, independently of the command) -> its description."""
    out: dict[str, str | None] = {}
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out |= _leaves(ann, f"{prefix}{name}.")
        else:
            out[prefix + name] = field.description
    return out


def _show_json() -> dict[str, dict[str, Any]]:
    result = CliRunner().invoke(app, ["config", "show", "--json"])
    assert result.exit_code == 0, result.output
    return {row["name"]: row for row in json.loads(result.stdout)}


def test_every_setting_is_listed_with_a_description() -> None:
    rows = _show_json()
    leaves = _leaves(Settings)
    assert set(rows) == set(leaves)
    assert {"retrain.kto_learning_rate", "monitor.self_judge.api_key", "console.port", "upstream"} <= set(rows)
    undocumented = sorted(name for name, row in rows.items() if not row["description"].strip())
    assert undocumented == [], f"settings without Field(description=...): {undocumented}"
    assert rows["retrain.kto_learning_rate"]["default"] == 3e-4
    assert rows["retrain.lora_target_modules"]["default"][0] == "q_proj"  # default_factory called
    assert not rows["retrain.kto_learning_rate"]["changed"]
    assert rows["retrain.kto_learning_rate"]["current"] is None


def test_environment_variables_are_the_ones_that_set_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARELOOP_RETRAIN__KTO_LEARNING_RATE", "0.0001")
    monkeypatch.setenv("CARELOOP_UPSTREAM", "http://127.0.0.1:8123")
    monkeypatch.setenv("CARELOOP_MONITOR__SELF_JUDGE__TIMEOUT_S", "12.5")
    rows = _show_json()
    assert rows["retrain.kto_learning_rate"]["env"] == "CARELOOP_RETRAIN__KTO_LEARNING_RATE"
    assert rows["retrain.kto_learning_rate"]["current"] == 1e-4
    assert rows["retrain.kto_learning_rate"]["changed"]
    assert rows["upstream"]["env"] == "CARELOOP_UPSTREAM"
    assert rows["upstream"]["current"] == "http://127.0.0.1:8123"
    assert rows["monitor.self_judge.timeout_s"]["env"] == "CARELOOP_MONITOR__SELF_JUDGE__TIMEOUT_S"
    assert rows["monitor.self_judge.timeout_s"]["current"] == 12.5


def test_every_boolean_flips_under_its_reported_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reported name is checked against pydantic-settings itself, at every nesting level."""
    flags = [r for r in setting_rows(load_settings()) if isinstance(r.default, bool)]
    assert len(flags) >= 8
    for row in flags:
        with monkeypatch.context() as m:
            m.setenv(row.env, str(not row.default).lower())
            flipped = {r.name: r for r in setting_rows(load_settings())}[row.name]
        assert flipped.changed and flipped.current is (not row.default), row.env


def test_secrets_are_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARELOOP_ADMIN_TOKEN", ADMIN_TOKEN)
    monkeypatch.setenv("CARELOOP_UPSTREAM_API_KEY", UPSTREAM_KEY)
    monkeypatch.setenv("CARELOOP_MONITOR__SELF_JUDGE__API_KEY", JUDGE_KEY)
    monkeypatch.setenv("CARELOOP_DATABASE_URL", "postgresql://careloop:db-pass-3456@127.0.0.1:5432/test")
    rows = _show_json()
    assert rows["admin_token"]["current"] == "***"
    assert rows["upstream_api_key"]["current"] == "***"
    assert rows["monitor.self_judge.api_key"]["current"] == "***"
    assert rows["database_url"]["current"] == "postgresql://careloop:***@127.0.0.1:5432/test"
    monkeypatch.setenv("COLUMNS", "250")
    table = CliRunner().invoke(app, ["config", "show"])
    assert table.exit_code == 0, table.output
    for out in (table.stdout, json.dumps(rows)):
        for secret in (ADMIN_TOKEN, UPSTREAM_KEY, JUDGE_KEY, "db-pass-3456"):
            assert secret not in out
    assert "CARELOOP_RETRAIN__KTO_LEARNING_RATE" in table.stdout
    assert "empty means [upstream]" in table.stdout  # descriptions are plain text, not rich markup
