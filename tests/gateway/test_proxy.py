"""The gateway's request path against a fake upstream: relay, streaming, logging, bad input, upstream failures."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson
import pytest
from sqlmodel import Session, select

from careloop.core.schema import Exchange
from careloop.core.settings import Settings
from careloop.gateway.record import Record
from tests.gateway.fake_upstream import FakeUpstream
from tests.gateway.gateway_helpers import running_gateway

pytestmark = pytest.mark.asyncio(loop_scope="session")

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "I am jane.doe@example.com, MRN 4471923. Is 500 mg of metformin ok?"}]


@pytest.fixture
def gw_settings(settings: Settings, fake: FakeUpstream) -> Settings:
    settings.upstream = fake.url
    settings.sample_rate = 1.0
    settings.gateway.log_flush_interval_s = 0.05
    settings.gateway.read_timeout_s = 2.0
    return settings


def rows(settings: Settings) -> list[Exchange]:
    from careloop.core.store import make_engine

    engine = make_engine(settings.database_url or "")
    with Session(engine) as session:
        out = list(session.exec(select(Exchange).order_by(Exchange.created_at)).all())  # type: ignore[arg-type]
    engine.dispose()
    return out


async def test_plain_completion_relayed_and_logged(gw_settings: Settings, fake: FakeUpstream,
                                                   client: aiohttp.ClientSession) -> None:
    async with running_gateway(gw_settings) as (_gw, url):
        async with client.post(url + CHAT, json={"model": "assistant", "messages": MESSAGES,
                                                 "max_tokens": 20, "user": "patient-7"}) as resp:
            assert resp.status == 200
            body = await resp.json()
            exchange_id = resp.headers["x-careloop-exchange-id"]
        assert body["choices"][0]["message"]["content"] == "Hello there."
        assert fake.requests[-1]["model"] == "smollm2-135m"  # public name → the stable target (base)
        assert fake.requests[-1]["max_tokens"] == 20
    (row,) = rows(gw_settings)  # the gateway drained its log on shutdown
    assert row.id == exchange_id
    assert (row.target, row.role, row.status, row.stream) == ("smollm2-135m", "stable", 200, False)
    assert row.request_messages[0]["content"] == "I am [EMAIL], MRN [MRN]. Is 500 mg of metformin ok?"
    assert row.response_text == "Hello there." and row.finish_reason == "stop"
    assert (row.prompt_tokens, row.completion_tokens) == (11, 3)
    assert row.sampled and row.judge_state == "pending"
    assert row.user_key and "patient-7" not in row.user_key
    assert row.request_params == {"model": "assistant", "max_tokens": 20}
    assert row.latency_ms is not None and row.latency_ms > 0


async def test_stream_chunks_pass_through_before_upstream_finishes(
        gw_settings: Settings, fake: FakeUpstream, client: aiohttp.ClientSession) -> None:
    fake.release = asyncio.Event()  # the upstream holds the rest of the stream until the client saw chunk 1
    async with running_gateway(gw_settings) as (_, url):
        async with client.post(url + CHAT, json={"model": "assistant", "messages": MESSAGES,
                                                 "stream": True}) as resp:
            assert resp.status == 200
            assert resp.headers["content-type"].startswith("text/event-stream")
            seen = b""
            while b'"Hello"' not in seen:
                seen += await asyncio.wait_for(resp.content.readany(), 5)
            assert not fake.release.is_set()  # got "Hello" while the upstream was still blocked
            fake.release.set()
            rest = await resp.content.read()
        full = seen + rest
        assert full.rstrip().endswith(b"data: [DONE]")
        assert b'"usage"' not in full  # the gateway asked for usage for its log; the client did not
        assert fake.requests[-1]["stream_options"] == {"include_usage": True}
    (row,) = rows(gw_settings)
    assert row.stream and row.response_text == "Hello there." and row.finish_reason == "stop"
    assert (row.prompt_tokens, row.completion_tokens) == (11, 3)


async def test_stream_keeps_usage_the_client_asked_for(gw_settings: Settings, fake: FakeUpstream,
                                                       client: aiohttp.ClientSession) -> None:
    async with (
        running_gateway(gw_settings) as (_, url),
        client.post(url + CHAT,
                    json={"model": "assistant", "messages": MESSAGES, "stream": True,
                          "stream_options": {"include_usage": True}}) as resp,
    ):
        full = await resp.read()
    assert b'"usage":{"prompt_tokens":11' in full


@pytest.mark.parametrize(("body", "status", "code"), [
    (b"{not json", 400, "invalid_json"),
    (b"[1, 2]", 400, "invalid_type"),
    (b'{"model": "assistant"}', 400, "missing_required_parameter"),
    (b'{"model": "assistant", "messages": "hi"}', 400, "invalid_type"),
    (b'{"model": "assistant", "messages": []}', 400, "invalid_type"),
    (b'{"model": "assistant", "messages": [{"content": "no role"}]}', 400, "invalid_type"),
    (b'{"model": "assistant", "messages": [{"role": "user", "content": 5}]}', 400, "invalid_type"),
    (b'{"model": "assistant", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}', 400,
     "invalid_type"),
    (b'{"model": 7, "messages": [{"role": "user", "content": "x"}]}', 400, "invalid_type"),
    (b'{"messages": [{"role": "user", "content": "x"}]}', 400, "missing_required_parameter"),
    (b'{"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]}', 404, "model_not_found"),
    # The base model and adapters are not addressable by name: only the public model is served.
    (b'{"model": "smollm2-135m", "messages": [{"role": "user", "content": "x"}]}', 404, "model_not_found"),
    (b'{"model": "assistant", "messages": [{"role": "user", "content": "' + b"x" * 2_000_000 + b'"}]}', 413,
     "request_too_large"),
])
async def test_bad_input_gets_a_4xx_openai_error(gw_settings: Settings, fake: FakeUpstream,
                                                 client: aiohttp.ClientSession, body: bytes, status: int,
                                                 code: str) -> None:
    async with (
        running_gateway(gw_settings) as (_, url),
        client.post(url + CHAT, data=body, headers={"Content-Type": "application/json"}) as resp,
    ):
        assert resp.status == status
        err = orjson.loads(await resp.read())["error"]
    assert err["code"] == code and err["message"] and err["type"] == "invalid_request_error"
    assert fake.requests == []  # nothing reached vLLM
    (row,) = rows(gw_settings)  # errors are logged too
    assert row.status == status and not row.sampled


@pytest.mark.parametrize(("method", "path", "status"), [
    ("POST", "/v1/load_lora_adapter", 404),
    ("POST", "/v1/unload_lora_adapter", 404),
    ("POST", "/v1/completions", 404),
    ("GET", CHAT, 405),
    ("GET", "/nope", 404),
])
async def test_other_routes_are_not_proxied(gw_settings: Settings, fake: FakeUpstream,
                                            client: aiohttp.ClientSession, method: str, path: str,
                                            status: int) -> None:
    async with (
        running_gateway(gw_settings) as (_, url),
        client.request(method, url + path, json={"lora_name": "x", "lora_path": "/tmp"}) as resp,
    ):
        assert resp.status == status
        assert "error" in orjson.loads(await resp.read())
    assert fake.admin_calls == []


async def test_models_health_metrics(gw_settings: Settings, fake: FakeUpstream,
                                     client: aiohttp.ClientSession) -> None:
    async with running_gateway(gw_settings) as (_, url):
        async with client.get(url + "/v1/models") as resp:
            assert [m["id"] for m in (await resp.json())["data"]] == ["assistant"]
        async with client.get(url + "/healthz") as resp:
            assert resp.status == 200
        async with client.get(url + "/readyz") as resp:
            assert resp.status == 200 and (await resp.json())["ready"]
        async with client.post(url + CHAT, json={"model": "assistant", "messages": MESSAGES}) as resp:
            await resp.read()
        async with client.get(url + "/metrics") as resp:
            text = await resp.text()
    for name in ("careloop_requests_total{adapter=\"smollm2-135m\",code=\"200\",key=\"none\"} 1.0",
                 "careloop_gateway_overhead_seconds_bucket", "careloop_upstream_latency_seconds_bucket",
                 "careloop_traffic_log_queue_depth", "careloop_traffic_log_dropped_total",
                 "careloop_adapter_info{adapter=\"smollm2-135m\",role=\"stable\"} 1.0",
                 "careloop_canary_traffic_fraction 0.0"):
        assert name in text, name


async def test_upstream_down_gives_503_and_not_ready(gw_settings: Settings, client: aiohttp.ClientSession) -> None:
    from tests.conftest import free_port

    gw_settings.upstream = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    async with running_gateway(gw_settings) as (_, url):
        async with client.get(url + "/readyz") as resp:
            assert resp.status == 503
        async with client.post(url + CHAT, json={"model": "assistant", "messages": MESSAGES}) as resp:
            assert resp.status == 503
            assert (await resp.json())["error"]["code"] == "upstream_unavailable"


async def test_upstream_vanishing_after_start_gives_503(gw_settings: Settings, fake: FakeUpstream,
                                                        client: aiohttp.ClientSession) -> None:
    async with running_gateway(gw_settings) as (_, url):
        await fake.stop()
        async with client.post(url + CHAT, json={"model": "assistant", "messages": MESSAGES}) as resp:
            assert resp.status == 503
            assert (await resp.json())["error"]["type"] == "upstream_error"
    (row,) = rows(gw_settings)
    assert row.status == 503 and row.finish_reason == "error" and "unreachable" in (row.response_text or "")


async def test_upstream_timeout_gives_504(gw_settings: Settings, fake: FakeUpstream,
                                          client: aiohttp.ClientSession) -> None:
    fake.mode = "hang"
    gw_settings.gateway.read_timeout_s = 0.5
    async with (
        running_gateway(gw_settings) as (_, url),
        client.post(url + CHAT, json={"model": "assistant", "messages": MESSAGES}) as resp,
    ):
        assert resp.status == 504
        assert (await resp.json())["error"]["code"] == "upstream_timeout"


async def test_upstream_error_status_passes_through(gw_settings: Settings, fake: FakeUpstream,
                                                    client: aiohttp.ClientSession) -> None:
    fake.mode = "error500"
    async with (
        running_gateway(gw_settings) as (_, url),
        client.post(url + CHAT, json={"model": "assistant", "messages": MESSAGES}) as resp,
    ):
        assert resp.status == 500
        assert (await resp.json())["error"]["message"] == "engine dead"
    (row,) = rows(gw_settings)
    assert row.status == 500 and not row.sampled


async def test_stream_cut_by_upstream_ends_with_an_error_event(gw_settings: Settings, fake: FakeUpstream,
                                                               client: aiohttp.ClientSession) -> None:
    fake.mode = "cut_stream"
    async with (
        running_gateway(gw_settings) as (_, url),
        client.post(url + CHAT, json={"model": "assistant", "messages": MESSAGES, "stream": True}) as resp,
    ):
        assert resp.status == 200
        full = await resp.read()
    assert b'"Hello"' in full
    last = full.strip().split(b"\n\n")[-1]
    assert last.startswith(b"data: ") and orjson.loads(last[6:])["error"]["code"] == "bad_gateway"
    (row,) = rows(gw_settings)
    assert row.status == 502


async def test_backpressure_holds_requests_until_the_log_has_room(gw_settings: Settings, fake: FakeUpstream,
                                                                  client: aiohttp.ClientSession) -> None:
    """Above the log's high-water mark a request is held before it is forwarded, not answered at once (answering
    and waiting afterwards lets the server read the connection's next request meanwhile: no backpressure)."""
    gw_settings.gateway.log_queue_size, gw_settings.gateway.log_batch_size = 20, 2
    async with running_gateway(gw_settings) as (gw, url):
        log = gw.traffic_log
        store = log.writer.store

        def slow_store(rows: list[dict[str, Any]]) -> None:  # a writer that takes 0.1 s a batch of 2
            time.sleep(0.1)
            store(rows)

        log.writer.store = slow_store  # type: ignore[method-assign]
        for i in range(18):  # queue above its high-water mark (10): ~0.4 s of writing before there is room
            log.submit(Record(f"held{i:04d}", time.time(), "assistant", "none", "stable", None,
                              {"model": "assistant", "messages": []}, None, 404, False, False, 1.0, "x"))
        assert log.depth > log.high_water
        async with client.post(url + CHAT, json={"model": "assistant", "messages": MESSAGES}) as resp:
            assert resp.status == 200
            depth_at_answer = log.depth
        assert depth_at_answer <= log.high_water + 1  # + its own record
        assert b"careloop_traffic_log_backpressure_total 1.0" in gw.metrics.render()
    assert len(rows(gw_settings)) == 19 and log.dropped == 0
