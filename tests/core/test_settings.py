"""The settings object: defaults from the design, environment, YAML file, overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from careloop.core.settings import Settings, load_settings


def test_defaults_match_the_design(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARELOOP_HOME", str(tmp_path))
    s = Settings()
    assert s.public_model == "assistant"
    assert s.sample_rate == 0.1
    assert s.monitor.alpha == 0.6
    assert s.retrain.max_cycles == 5
    assert s.database_url == f"sqlite:///{tmp_path / 'careloop.db'}"


def test_env_yaml_and_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "careloop.yaml"
    cfg.write_text("sample_rate: 0.25\nmonitor:\n  alpha: 0.8\n  kappa_floor: 0.5\n")
    monkeypatch.setenv("CARELOOP_CONFIG_FILE", str(cfg))
    monkeypatch.setenv("CARELOOP_MONITOR__ALPHA", "0.7")
    monkeypatch.setenv("CARELOOP_ADMIN_TOKEN", " t0k-long-enough-1234\n")
    s = load_settings(public_model="medbot", upstream=None)
    assert s.sample_rate == 0.25  # from YAML
    assert s.monitor.alpha == 0.7  # env beats YAML
    assert s.monitor.kappa_floor == 0.5
    assert s.admin_token == "t0k-long-enough-1234"
    assert s.public_model == "medbot"  # explicit override
    assert s.upstream == "http://127.0.0.1:8000"  # None overrides are ignored


def test_invalid_values_are_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARELOOP_SAMPLE_RATE", "1.5")
    with pytest.raises(ValueError):
        Settings()
