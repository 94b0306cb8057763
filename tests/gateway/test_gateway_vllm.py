"""The gateway in front of the real CPU vLLM: the official openai client, streaming and not, and an adapter
going through registry → reconcile (loaded into vLLM) → canary traffic → rollback (unloaded)."""

from __future__ import annotations

import uuid
from pathlib import Path

import aiohttp
import pytest
from sqlmodel import Session, select

from careloop.core import registry
from careloop.core.schema import Exchange
from careloop.core.settings import Settings
from careloop.core.store import init_db, make_engine
from tests.gateway.gateway_helpers import running_gateway

pytestmark = [pytest.mark.vllm, pytest.mark.asyncio(loop_scope="session")]

QUESTION = [{"role": "user", "content": "My email is ann@example.org. What is a normal resting heart rate?"}]


@pytest.fixture
def vllm_settings(settings: Settings, vllm_url: str) -> Settings:
    settings.upstream = vllm_url
    settings.sample_rate = 1.0
    settings.admin_token = "tok-0123456789abcdef"
    settings.gateway.log_flush_interval_s = 0.05
    return settings


def _rows(settings: Settings) -> list[Exchange]:
    engine = make_engine(settings.database_url or "")
    with Session(engine) as session:
        out = list(session.exec(select(Exchange).order_by(Exchange.created_at)).all())  # type: ignore[arg-type]
    engine.dispose()
    return out


async def test_openai_client_plain_and_streamed(vllm_settings: Settings) -> None:
    from openai import AsyncOpenAI

    async with running_gateway(vllm_settings) as (_, url):
        client = AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
        models = await client.models.list()
        assert [m.id for m in models.data] == ["assistant"]
        reply = await client.chat.completions.create(model="assistant", messages=QUESTION,  # type: ignore[arg-type]
                                                     max_tokens=16, temperature=0)
        assert reply.choices[0].message.content
        assert reply.usage is not None and reply.usage.completion_tokens > 0
        stream = await client.chat.completions.create(model="assistant", messages=QUESTION,  # type: ignore[arg-type]
                                                      max_tokens=16, temperature=0, stream=True)
        pieces, usage_chunks = [], 0
        async for chunk in stream:  # type: ignore[union-attr]
            if chunk.usage is not None:
                usage_chunks += 1
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
        assert "".join(pieces) == reply.choices[0].message.content  # greedy: the same text both ways
        assert usage_chunks == 0  # the gateway's own usage request does not leak to the client
        await client.close()
    plain, streamed = _rows(vllm_settings)
    for row in (plain, streamed):
        assert row.status == 200 and row.target == vllm_settings.base_model and row.sampled
        assert row.response_text == reply.choices[0].message.content
        assert row.request_messages[0]["content"].startswith("My email is [EMAIL].")
        assert row.prompt_tokens == reply.usage.prompt_tokens
        assert row.completion_tokens == reply.usage.completion_tokens
    assert (plain.stream, streamed.stream) == (False, True)


def _tiny_lora(base_dir: Path, out: Path) -> Path:
    """A random (non-zero) LoRA r=8 on q_proj/v_proj of the embedded model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                                  init_lora_weights=False, task_type="CAUSAL_LM"))
    peft_model.save_pretrained(str(out))
    return out


async def test_adapter_round_trip_through_registry_and_reconcile(
        vllm_settings: Settings, vllm_url: str, embedded_model_dir: Path, tmp_path: Path) -> None:
    path = _tiny_lora(embedded_model_dir, tmp_path / "lora")
    engine = make_engine(vllm_settings.database_url or "")
    init_db(engine)
    name, version = registry.next_adapter_name(engine, f"gwtest{uuid.uuid4().hex[:8]}")
    registry.register_adapter(engine, name, str(path), vllm_settings.base_model, version)
    registry.set_canary(engine, name, 1.0)  # every user on the canary for this test
    auth = {"Authorization": "Bearer tok-0123456789abcdef"}
    async with running_gateway(vllm_settings) as (gw, url), aiohttp.ClientSession() as http:
        assert gw.routes.canary == name  # loaded into vLLM at startup, before any traffic
        async with http.get(vllm_url + "/v1/models") as resp:
            assert name in {m["id"] for m in (await resp.json())["data"]}
        body = {"model": "assistant", "messages": QUESTION, "max_tokens": 8, "user": "u1"}
        async with http.post(url + "/v1/chat/completions", json=body) as resp:
            assert resp.status == 200
            assert (await resp.json())["model"] == name  # vLLM answered through the adapter
        async with http.post(url + "/admin/rollback", headers=auth) as resp:
            assert (await resp.json())["rolled_back"] == name
        async with http.get(vllm_url + "/v1/models") as resp:
            assert name not in {m["id"] for m in (await resp.json())["data"]}  # unloaded from vLLM
        async with http.post(url + "/v1/chat/completions", json=body) as resp:
            assert (await resp.json())["model"] == vllm_settings.base_model
    rows = _rows(vllm_settings)
    assert [(r.target, r.role) for r in rows] == [(name, "canary"), (vllm_settings.base_model, "stable")]
    engine.dispose()
