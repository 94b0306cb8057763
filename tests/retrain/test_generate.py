"""Retrain loads and unloads its checkpoints through the gateway's vLLM adapter client (the one client)."""

from __future__ import annotations

import asyncio

import pytest

from careloop.gateway.vllm_admin import AdapterLoadError
from careloop.retrain.generate import load_adapter, unload_adapter
from tests.gateway.fake_upstream import FakeUpstream

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_checkpoints_load_and_unload_through_the_gateways_adapter_client() -> None:
    fake = FakeUpstream()
    await fake.start()
    try:
        await asyncio.to_thread(load_adapter, fake.url, "run1-c1-kto", "/runs/run-1/cycle-1/kto")
        await asyncio.to_thread(load_adapter, fake.url, "run1-c1-kto", "/runs/run-1/cycle-1/kto")  # loaded: fine
        assert fake.loaded == {"run1-c1-kto"}
        assert fake.admin_calls[0] == ("load", {"lora_name": "run1-c1-kto", "lora_path": "/runs/run-1/cycle-1/kto"})
        assert await asyncio.to_thread(unload_adapter, fake.url, "run1-c1-kto")
        assert fake.loaded == set()
        fake.refuse_loads.add("broken")
        with pytest.raises(AdapterLoadError):
            await asyncio.to_thread(load_adapter, fake.url, "broken", "/nowhere")
    finally:
        await fake.stop()
    assert not await asyncio.to_thread(unload_adapter, fake.url, "run1-c1-kto", timeout_s=5.0)  # vLLM gone
