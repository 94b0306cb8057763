"""The one-machine stack: ports checked before anything starts; its local retrain runs stop with it."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

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


def test_vllm_computes_on_every_core_of_a_small_machine(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from careloop.stack import vllm_cpu_bind, vllm_env

    # vLLM's own rule would bind its engine to one core of two and reserve the other for its API server.
    assert vllm_cpu_bind("auto", {0, 1}) == "0,1"
    assert vllm_cpu_bind("auto", {2, 3, 5}) == "2,3,5"  # a cpuset (container) is honoured
    assert vllm_cpu_bind("auto", set(range(16))) == "auto"  # a serving box: vLLM's own rule
    assert vllm_cpu_bind("all", set(range(16))) == ",".join(map(str, range(16)))
    assert vllm_cpu_bind("vllm", {0, 1}) == "auto"
    assert vllm_cpu_bind("0-3", {0, 1}) == "0-3"
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    assert vllm_env(settings.model_copy(update={"vllm_cpu_bind": "nobind"}))["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "1")  # an operator's own binding wins
    assert vllm_env(settings)["VLLM_CPU_OMP_THREADS_BIND"] == "1"


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


def _with_model(settings: Settings, model_dir: Path) -> Settings:
    settings.models_dir.mkdir(parents=True, exist_ok=True)
    settings.base_model_dir.symlink_to(model_dir, target_is_directory=True)
    return settings


async def test_up_uses_a_running_vllm_instead_of_starting_one(settings: Settings, embedded_model_dir: Path) -> None:
    import asyncio

    import aiohttp
    from rich.console import Console

    from careloop.stack import start_stack
    from tests.conftest import free_port
    from tests.gateway.fake_upstream import FakeUpstream

    settings = _with_model(settings, embedded_model_dir)
    upstream = FakeUpstream()
    await upstream.start()
    with socket.socket() as taken:  # the port vLLM would start on is taken: not checked, nothing starts there
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings.vllm_port, settings.vllm_managed, settings.upstream = taken.getsockname()[1], False, upstream.url
        settings.gateway.port, settings.console.enabled = free_port(), False
        stack = await asyncio.to_thread(start_stack, settings, Console(quiet=True), False)
    try:
        assert [c.name for c in stack.children] == ["gateway"]
        body = {"model": settings.public_model, "messages": [{"role": "user", "content": "hi"}]}
        async with aiohttp.ClientSession() as http, http.post(f"{stack.gateway_url}/v1/chat/completions",
                                                              json=body) as resp:
            assert resp.status == 200, await resp.text()
        assert len(upstream.requests) == 1  # the gateway answered from the running upstream
    finally:
        await asyncio.to_thread(stack.stop)
        await upstream.stop()


def test_up_fails_clearly_when_the_running_vllm_is_not_there(settings: Settings, embedded_model_dir: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.console import Console

    from careloop import stack
    from careloop.stack import start_stack
    from tests.conftest import free_port

    monkeypatch.setattr(stack, "RUNNING_VLLM_WAIT_S", 1.0)
    settings = _with_model(settings, embedded_model_dir)
    settings.vllm_managed, settings.upstream = False, f"http://127.0.0.1:{free_port()}"
    settings.gateway.port, settings.console.enabled = free_port(), False
    with pytest.raises(TimeoutError, match=settings.upstream):
        start_stack(settings, Console(quiet=True), with_monitor=False)
