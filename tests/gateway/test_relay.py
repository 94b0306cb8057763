"""Relaying a stream: whole events only while the gateway drops the usage event it asked for, raw bytes logged."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from careloop.core.store import make_engine
from careloop.gateway.exchange import Exchange, new_exchange_id
from careloop.gateway.metrics import GatewayMetrics
from careloop.gateway.record import Record
from careloop.gateway.relay import relay
from careloop.gateway.request_id import request_ids
from careloop.gateway.traffic_log import TrafficLog

EVENTS = [b'data: {"choices":[{"index":0,"delta":{"content":"Hel"}}]}\n\n',
          b'data: {"choices":[{"index":0,"delta":{"content":"lo"}}]}\n\n',
          b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n',
          b"data: [DONE]\n\n"]


class FakeResponse:
    """Just what `relay` reads of an upstream response."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.status = 200
        self.content_type = b"text/event-stream"
        self.chunks = list(chunks)
        self.released = self.closed = False

    async def chunk(self) -> bytes | None:
        return self.chunks.pop(0) if self.chunks else None

    def release(self) -> None:
        self.released = True

    def close(self) -> None:
        self.closed = True


async def relayed(tmp_path: Path, chunks: list[bytes], strip_usage: bool) -> tuple[bytes, Record, FakeResponse]:
    exchange_id = new_exchange_id()
    ex = Exchange(0.0, 0.0, exchange_id, request_ids(exchange_id, None, None), [], strip_usage=strip_usage)
    record = Record(exchange_id, 0.0, "m", "m", "stable", None, {}, None, 0, True, False, 0.0)
    log = TrafficLog(make_engine(f"sqlite:///{tmp_path / 'x.db'}"), tmp_path / "spool", GatewayMetrics())
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()  # the client stays
        return {}

    resp = FakeResponse(chunks)
    await relay(ex, record, resp, receive, send, log)  # type: ignore[arg-type]
    assert ex.status == 200 and ex.started and log.depth == 1
    return b"".join(m.get("body", b"") for m in sent[1:]), record, resp


async def test_events_cut_across_chunks_go_out_whole_without_the_usage_event(tmp_path: Path) -> None:
    raw = b"".join(EVENTS)
    cuts = [raw[:20], raw[20:58], raw[58:90], raw[90:]]  # cut inside events, and between the two newlines
    body, record, resp = await relayed(tmp_path, cuts, strip_usage=True)
    assert body == EVENTS[0] + EVENTS[1] + EVENTS[3]
    assert record.response == cuts and record.status == 200  # the log keeps what vLLM sent, usage included
    assert resp.released and not resp.closed


async def test_a_client_that_asked_for_usage_gets_the_stream_as_sent(tmp_path: Path) -> None:
    body, _, _ = await relayed(tmp_path, EVENTS, strip_usage=False)
    assert body == b"".join(EVENTS)
