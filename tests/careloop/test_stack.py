"""The one-machine stack: ports checked before anything starts; its local retrain runs stop with it."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from careloop.core.schema import RetrainRun
from careloop.core.settings import Settings
from careloop.core.store import init_db, make_engine, session_scope
from careloop.stack import check_ports, stop_local_runs


def test_a_taken_port_is_refused_before_anything_starts(settings: Settings) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        settings.vllm_port = sock.getsockname()[1]
        with pytest.raises(RuntimeError, match=f"vLLM port {settings.vllm_port}"):
            check_ports(settings, with_monitor=False)


def test_stopping_the_stack_stops_its_local_retrain_runs_only(settings: Settings) -> None:
    retrain = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "retrain"])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    engine = make_engine(settings.database_url or "")
    init_db(engine)
    with session_scope(engine) as s:
        s.add(RetrainRun(status="running", backend="local", handle=str(retrain.pid)))
        s.add(RetrainRun(status="running", backend="local", handle=str(other.pid)))  # a reused pid
        s.add(RetrainRun(status="running", backend="kubernetes", handle="careloop-retrain-3"))
    engine.dispose()
    try:
        assert stop_local_runs(settings) == [retrain.pid]
        assert retrain.wait(10) != 0
        assert other.poll() is None
    finally:
        for proc in (retrain, other):
            proc.kill()
            proc.wait()


def test_vllm_serves_in_the_dtype_the_cpu_computes_fastest(settings: Settings,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from careloop import stack

    def dtype_arg(cfg: Settings) -> str:
        cmd = stack.vllm_command(cfg)
        return cmd[cmd.index("--dtype") + 1]

    monkeypatch.setattr(stack, "native_bf16", lambda: True)
    assert dtype_arg(settings) == "bfloat16"
    monkeypatch.setattr(stack, "native_bf16", lambda: False)
    assert dtype_arg(settings) == "float32"
    assert dtype_arg(settings.model_copy(update={"vllm_dtype": "bfloat16"})) == "bfloat16"
    # An operator's own --dtype in vllm_extra_args comes last, so vLLM's parser takes it.
    cmd = stack.vllm_command(settings.model_copy(update={"vllm_extra_args": ["--dtype", "bfloat16"]}))
    assert cmd[-2:] == ["--dtype", "bfloat16"]


def test_the_console_port_is_checked_unless_the_console_is_off(settings: Settings) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        settings.vllm_port = settings.gateway.port = settings.monitor.port = 1  # nobody listens there
        settings.console.port = sock.getsockname()[1]
        with pytest.raises(RuntimeError, match=f"console port {settings.console.port}"):
            check_ports(settings, with_monitor=False)
        settings.console.enabled = False
        check_ports(settings, with_monitor=False)
