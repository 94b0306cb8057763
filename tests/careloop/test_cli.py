"""`careloop model serve`: the pod-side way to run vLLM, with `careloop up`'s command line and environment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from careloop import stack
from careloop.cli import app


def test_model_serve_execs_vllm_with_the_settings_command_line(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    execs: list[tuple[str, list[str], dict[str, str]]] = []

    def fake_exec(file: str, args: list[str], env: dict[str, str]) -> Any:
        execs.append((file, args, env))

    monkeypatch.setattr("os.execvpe", fake_exec)
    monkeypatch.setattr(stack, "native_bf16", lambda: False)
    monkeypatch.setenv("CARELOOP_HOME", str(tmp_path))
    monkeypatch.setenv("CARELOOP_BASE_MODEL_PATH", str(tmp_path / "weights"))
    monkeypatch.setenv("CARELOOP_BASE_MODEL", "my-base")
    monkeypatch.setenv("CARELOOP_RETRAIN__LORA_R", "32")
    out = CliRunner().invoke(app, ["model", "serve", "--host", "0.0.0.0", "--port", "8123"])
    assert out.exit_code == 0, out.output
    ((file, args, env),) = execs
    assert args[0] == file and args[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    flags = {a: (b if not b.startswith("--") else "") for a, b in zip(args, [*args[1:], "--"], strict=True)
             if a.startswith("--")}
    assert flags["--model"] == str(tmp_path / "weights") and flags["--served-model-name"] == "my-base"
    assert flags["--host"] == "0.0.0.0" and flags["--port"] == "8123"
    assert "--enable-lora" in flags and flags["--max-lora-rank"] == "32" and flags["--dtype"] == "float32"
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
