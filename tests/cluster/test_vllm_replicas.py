"""Several vLLM replicas (two real CPU vLLM servers on loopback: the session's and its second, `second_vllm`):
adapters reach every replica before traffic does, and a replica that restarts gets the current stable and
canary adapters back from the registry."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy.engine import Engine

from careloop.core.registry import promote, register_adapter, set_canary
from careloop.core.settings import Settings
from careloop.core.store import init_db, make_engine
from careloop.gateway.routing import Routes
from careloop.gateway.vllm_admin import loaded_models, unload_adapter
from tests.conftest import Replica, free_port

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
BASE = "smollm2-135m"


@pytest.fixture(scope="module")
def adapters(embedded_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two tiny, non-trivial LoRA adapters (r=8 on q_proj/v_proj) saved as vLLM loads them."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out: dict[str, Path] = {}
    tag = uuid.uuid4().hex[:8]  # the session's vLLM is shared: names nobody else uses
    for i, name in enumerate((f"{BASE}-replicas-{tag}-v1", f"{BASE}-replicas-{tag}-v2")):
        torch.manual_seed(i)
        model = AutoModelForCausalLM.from_pretrained(embedded_model_dir, dtype=torch.float32)
        peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                                      init_lora_weights=False, task_type="CAUSAL_LM"))
        path = tmp_path_factory.mktemp("adapters") / name
        peft_model.save_pretrained(str(path))
        out[name] = path
    return out


async def _reconcile(session: aiohttp.ClientSession, engine: Engine, upstreams: list[str],
                     previous: Routes | None = None) -> Routes:
    """One reconcile step of a gateway: read the registry, bring the replicas in line, get the routes."""
    import careloop.gateway.vllm_admin as admin

    registry: Any = admin.read_registry(engine) if hasattr(admin, "read_registry") else engine
    return await admin.reconcile(session, registry, upstreams, BASE, previous=previous)


def _assert_routed_only_where_loaded(routes: Routes, upstreams: list[str]) -> list[str]:
    """Every adapter that takes traffic is loaded on every replica traffic may go to; returns those replicas."""
    serving = list(getattr(routes, "replicas", ()) or upstreams)
    assert serving
    for name in (routes.stable_adapter, routes.canary):
        for url in serving if name else []:
            assert name in routes.loaded.get(url, []), f"{name} routed but not loaded on {url}"
    return serving


async def _chat(session: aiohttp.ClientSession, url: str, model: str) -> int:
    async with session.post(f"{url}/v1/chat/completions", json={
        "model": model, "max_tokens": 4, "messages": [{"role": "user", "content": "Hello"}],
    }) as resp:
        await resp.read()
        return resp.status


async def test_adapters_reach_every_replica_before_traffic_and_come_back_after_a_restart(
    vllm_url: str, second_vllm: Replica, adapters: dict[str, Path], tmp_path: Path,
) -> None:
    """Replica 0 is the session's vLLM, replica 1 its second, which restarts midway."""
    replica = second_vllm.running()
    engine = make_engine(f"sqlite:///{tmp_path / 'store.db'}")
    init_db(engine)
    v1, v2 = sorted(adapters)
    register_adapter(engine, v1, str(adapters[v1]), BASE, version=1)
    promote(engine, v1, reason="test")
    register_adapter(engine, v2, str(adapters[v2]), BASE, version=2, parent=v1)
    set_canary(engine, v2, 0.2, reason="test")
    urls = [vllm_url, replica.url]
    unreachable = f"http://127.0.0.1:{free_port()}"

    async with aiohttp.ClientSession() as session:
        # A replica that cannot be reached: it gets no traffic, and no adapter is routed anywhere it is missing.
        routes = await _reconcile(session, engine, [*urls, unreachable])
        assert unreachable not in routes.loaded
        serving = _assert_routed_only_where_loaded(routes, [*urls, unreachable])
        assert unreachable not in serving or (routes.stable_adapter, routes.canary) == (None, None)

        # All replicas reachable, two gateway replicas reconciling at the same moment: both adapters end up
        # loaded on every vLLM replica, and only then are they routed (by both gateways).
        both = await asyncio.gather(*(_reconcile(session, engine, urls, previous=routes) for _ in range(2)))
        assert {(r.stable, r.canary) for r in both} == {(v1, v2)}
        routes = both[0]
        assert sorted(_assert_routed_only_where_loaded(routes, urls)) == sorted(urls)
        for url in urls:
            assert {v1, v2} <= set(await loaded_models(session, url))
            assert {v1, v2} <= set(routes.loaded[url])  # the shared server may hold others' adapters too
            for model in (v1, v2):
                assert await _chat(session, url, model) == 200

        # Replica 1 restarts: it comes back with the base model only ...
        replica.stop()
        replica.start()
        replica.wait()
        fresh = await loaded_models(session, urls[1])
        assert v1 not in fresh and v2 not in fresh
        assert await _chat(session, urls[1], v2) != 200
        # ... and the next reconcile gives it the current stable and canary adapters again.
        routes = await _reconcile(session, engine, urls, previous=routes)
        assert (routes.stable, routes.canary) == (v1, v2)
        assert sorted(_assert_routed_only_where_loaded(routes, urls)) == sorted(urls)
        assert {v1, v2} <= set(await loaded_models(session, urls[1]))
        assert await _chat(session, urls[1], v2) == 200
        for name in (v1, v2):  # leave the shared server as we found it
            await unload_adapter(session, vllm_url, name)
    engine.dispose()


@pytest.mark.kills_second_vllm
async def test_killing_one_replica_under_load_costs_no_client_error(
    vllm_url: str, second_vllm: Replica, tmp_path: Path, record_property: Callable[[str, object], None],
) -> None:
    """Two real vLLM replicas behind the gateway; one is SIGKILLed while requests are in flight: every request
    still gets its 200 (retried on the other replica before any byte went out) and that replica's breaker opens
    within a second or so of the kill (the periodic health probe finds it silent). Runs last in its group: it leaves
    the second vLLM dead."""
    from tests.gateway.gateway_helpers import running_gateway

    replica = second_vllm.running()
    settings = Settings(home=tmp_path / "home", upstream_replicas=[vllm_url, replica.url])
    settings.ensure_dirs()
    body = {"model": settings.public_model, "max_tokens": 8, "temperature": 0,
            "messages": [{"role": "user", "content": "Name one vitamin."}]}
    statuses: list[int] = []
    stop = asyncio.Event()

    async def client(session: aiohttp.ClientSession, url: str) -> None:
        while not stop.is_set():
            async with session.post(f"{url}/v1/chat/completions", json=body) as resp:
                await resp.read()
                statuses.append(resp.status)

    async with running_gateway(settings) as (gateway, url), aiohttp.ClientSession() as session:
        breakers = gateway.upstreams.breakers
        clients = [asyncio.create_task(client(session, url)) for _ in range(6)]
        while len(statuses) < 12:  # both replicas answering
            await asyncio.sleep(0.05)
        assert replica.proc is not None
        failed_at: list[float] = []
        count_failure = breakers.failure

        def failure(url: str, refused: bool = False) -> None:
            failed_at.append(time.monotonic())
            count_failure(url, refused)

        breakers.failure = failure  # type: ignore[method-assign]
        killed_at = time.monotonic()
        os.killpg(replica.proc.pid, signal.SIGKILL)
        served_before = len(statuses)
        while len(statuses) < served_before + 12:  # and traffic carries on on the other replica
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.gather(*clients)
    replica.proc.wait(30)
    # The killed server goes silent at once, though the kernel may take seconds to close its sockets (the
    # listening socket can outlive the API server while the engine process tears down): the probe every 0.25 s
    # that gets no answer in 0.5 s opens the breaker, whether or not a request has failed yet. On an overloaded
    # machine a live replica (or the gateway's own loop) can stall past 0.5 s too: that opens a breaker for one
    # period (requests go to the other replica), which costs capacity, never a client error; counted here.
    signs = [round(t - killed_at, 3) for t in failed_at]
    after = [t for url, t in breakers.opened if url == replica.url and t >= killed_at]
    opened_at = after[0] if after else killed_at  # already open at the kill: left at once
    transient = [(url, round(t - killed_at, 3)) for url, t in breakers.opened if t < killed_at or url != replica.url]
    record_property("breaker_opened_after_kill_s", round(opened_at - killed_at, 3))
    record_property("transient_openings", transient)
    # The target is 1 s (measured 0.39 s quiet, 0.62 s inside the full suite); the bound leaves the in-process
    # gateway's own stalls on an overloaded 2-core CI machine half a second.
    assert not breakers.up(replica.url) and opened_at - killed_at <= 1.5, (opened_at - killed_at, signs, transient)
    assert statuses and set(statuses) == {200}, sorted(set(statuses))
