"""Hostile input against the real gateway (uvicorn in this loop, fake upstream): head limits, slow clients,
generation parameters, client disconnects, and what error bodies and `/readyz` may say."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
import pytest
from sqlmodel import Session, select

from careloop.core.schema import Exchange
from careloop.core.settings import Settings
from careloop.core.store import make_engine
from careloop.gateway.app import Gateway
from tests.gateway.fake_upstream import FakeUpstream
from tests.gateway.gateway_helpers import running_gateway

pytestmark = pytest.mark.asyncio(loop_scope="session")
CHAT = "/v1/chat/completions"
BODY = {"model": "assistant", "messages": [{"role": "user", "content": "Is 500 mg of metformin ok?"}]}


@pytest.fixture
def gw_settings(settings: Settings, fake: FakeUpstream) -> Settings:
    settings.upstream = fake.url
    settings.upstream_api_key = "sk-upstream-secret-0123456789"
    settings.gateway.log_flush_interval_s = 0.05
    settings.gateway.header_timeout_s = 0.5
    settings.gateway.body_timeout_s = 0.5
    settings.gateway.max_header_bytes = 8192
    settings.gateway.max_header_count = 50
    settings.gateway.max_request_line_bytes = 2048
    settings.gateway.model_max_tokens = 512
    return settings


async def raw(url: str, data: bytes, read_timeout: float = 5.0) -> bytes:
    """Send raw bytes to the gateway; what it answers before closing (or the timeout)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)
        await writer.drain()
    except ConnectionError:
        pass
    out = b""
    try:
        while chunk := await asyncio.wait_for(reader.read(65536), read_timeout):
            out += chunk
    except (TimeoutError, ConnectionError):
        pass
    writer.close()
    return out


def rows(settings: Settings) -> list[Exchange]:
    engine = make_engine(settings.database_url or "")
    with Session(engine) as session:
        out = list(session.exec(select(Exchange)).all())
    engine.dispose()
    return out


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"GET /healthz?" + b"a" * 4000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", b"414"),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", b"431"),
    (b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(80)) + b"\r\n", b"431"),
])
async def test_oversized_heads_are_refused(gw_settings: Settings, request_bytes: bytes, status: bytes) -> None:
    async with running_gateway(gw_settings) as (_, url):
        answer = await raw(url, request_bytes)
        assert answer.startswith(b"HTTP/1.1 " + status), answer[:200]
        assert b'"error"' in answer
        assert (await raw(url, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 1.0)).startswith(b"HTTP/1.1 200")


async def test_slow_clients_get_408(gw_settings: Settings) -> None:
    async with running_gateway(gw_settings) as (_, url):
        slow_head = await raw(url, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n", 3.0)
        assert slow_head.startswith(b"HTTP/1.1 408")
        slow_body = await raw(url, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{",
                              3.0)
        assert slow_body.startswith(b"HTTP/1.1 408")


async def test_generation_params_checked_clamped_and_stripped(gw_settings: Settings, fake: FakeUpstream,
                                                              client: aiohttp.ClientSession) -> None:
    async with running_gateway(gw_settings) as (_, url):
        for bad in ({"n": 5}, {"n": "2"}, {"max_tokens": 0}, {"top_logprobs": 50}, {"logprobs": "yes"},
                    {"temperature": 9}, {"max_tokens": True}):
            async with client.post(url + CHAT, json={**BODY, **bad}) as resp:
                assert resp.status == 400, bad
                assert (await resp.json())["error"]["param"] == next(iter(bad))
        async with client.post(url + CHAT, json={**BODY, "max_tokens": 100_000, "chat_template": "{{ evil }}",
                                                 "chat_template_kwargs": {"x": 1}, "n": 1}) as resp:
            assert resp.status == 200
        sent = fake.requests[-1]
        assert sent["max_tokens"] == 512 and "chat_template" not in sent and "chat_template_kwargs" not in sent


async def test_template_fields_forwarded_when_allowed(gw_settings: Settings, fake: FakeUpstream,
                                                     client: aiohttp.ClientSession) -> None:
    gw_settings.gateway.allow_template_kwargs = True
    async with running_gateway(gw_settings) as (_, url), \
            client.post(url + CHAT, json={**BODY, "chat_template_kwargs": {"enable_thinking": False}}) as resp:
        assert resp.status == 200
    assert fake.requests[-1]["chat_template_kwargs"] == {"enable_thinking": False}


@pytest.mark.parametrize("stream", [False, True])
async def test_client_disconnect_cancels_the_upstream_request(gw_settings: Settings, fake: FakeUpstream,
                                                              stream: bool) -> None:
    fake.mode = "hang" if not stream else "ok"
    fake.release = asyncio.Event() if stream else None
    async with running_gateway(gw_settings) as (gw, url):
        session = aiohttp.ClientSession()
        try:
            request = asyncio.ensure_future(session.post(url + CHAT, json={**BODY, "stream": stream}))
            if stream:
                resp = await request
                await resp.content.readany()
            else:
                await asyncio.sleep(0.5)  # the upstream is generating (hanging)
            await session.close()  # the client leaves
            for _ in range(100):
                if fake.cancelled:
                    break
                await asyncio.sleep(0.05)
            assert fake.cancelled, "the upstream request was not cancelled"
        finally:
            await session.close()
            request.cancel()
            await asyncio.gather(request, return_exceptions=True)
            if fake.release is not None:
                fake.release.set()
        await gw.traffic_log.flush()
        assert b"careloop_client_disconnects_total 1.0" in gw.metrics.render()
    (row,) = rows(gw_settings)
    assert row.status == 499 and "client" in (row.response_text or "")


async def test_errors_and_readyz_reveal_no_internals(gw_settings: Settings, fake: FakeUpstream,
                                                     client: aiohttp.ClientSession) -> None:
    async with running_gateway(gw_settings) as (_, url):
        async with client.get(url + "/readyz") as resp:
            assert resp.status == 200 and await resp.json() == {"ready": True}
        await fake.stop()  # the upstream goes away
        async with client.post(url + CHAT, json=BODY) as resp:
            body = await resp.read()
            assert resp.status == 503
        async with client.get(url + "/readyz") as resp:
            assert resp.status == 503 and await resp.json() == {"ready": False}
    for text in (body, orjson.dumps([r.model_dump(mode="json") for r in rows(gw_settings)])):
        assert b"127.0.0.1" not in text and str(fake.port).encode() not in text and b"sk-upstream" not in text


async def test_admin_token_must_be_long_enough(settings: Settings) -> None:
    settings.admin_token = "short"
    with pytest.raises(ValueError, match="at least 16"):
        Gateway(settings)
    settings.admin_token = "  a-long-enough-admin-token\n"
    assert Gateway(settings).settings.admin_token == "a-long-enough-admin-token"
