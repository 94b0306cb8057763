"""Relay vLLM's answer to the client: a whole body as it came, or an SSE stream chunk by chunk.

The response is never parsed here. The only stream rewriting is dropping vLLM's trailing usage-only event when
the gateway asked for it (to log token counts) and the client did not. The exchange's record goes to the
traffic log (its WAL first) before the last byte of the response goes out.
"""

from __future__ import annotations

import asyncio
import time

from careloop.gateway.asgi import Receive, Send
from careloop.gateway.exchange import Exchange
from careloop.gateway.record import Record
from careloop.gateway.traffic_log import TrafficLog
from careloop.gateway.upstream_client import UpstreamResponse

SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
               (b"x-accel-buffering", b"no")]
_USAGE_MARKERS = (b'"choices":[]', b'"choices": []')


async def relay(ex: Exchange, record: Record, resp: UpstreamResponse, receive: Receive, send: Send,
                log: TrafficLog) -> None:
    """Send vLLM's response to the client and log the record; a client that left stops vLLM (status 499)."""
    completed = False
    try:
        ex.status = resp.status
        ctype = resp.content_type
        if not record.stream or ex.status != 200 or not ctype.startswith(b"text/event-stream"):
            await _relay_body(ex, record, resp, ctype, send, log)
        else:
            await _relay_stream(ex, record, resp, receive, send, log)
        completed = ex.status != 499
    finally:
        if completed:
            resp.release()
        else:
            resp.close()  # stop vLLM generating for a client that left (or a failed read)


async def _relay_body(ex: Exchange, record: Record, resp: UpstreamResponse, ctype: bytes, send: Send,
                      log: TrafficLog) -> None:
    """The whole body, as it came, with its status and content type."""
    t_up = time.perf_counter()
    data = await resp.read()
    ex.upstream_wait += time.perf_counter() - t_up
    record.response, record.status = data, ex.status
    record.latency_ms = (time.perf_counter() - ex.t0) * 1000.0
    log.submit(record)
    await send({"type": "http.response.start", "status": ex.status,
                "headers": [(b"content-type", ctype), (b"content-length", str(len(data)).encode()),
                            *ex.id_header]})
    ex.started = True
    await send({"type": "http.response.body", "body": data})


async def _relay_stream(ex: Exchange, record: Record, resp: UpstreamResponse, receive: Receive, send: Send,
                        log: TrafficLog) -> None:
    """SSE chunks forwarded as each arrives (whole events only while dropping the usage event)."""
    chunks: list[bytes] = []
    record.response = chunks
    await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS + ex.id_header})
    ex.started = True
    disconnected = asyncio.ensure_future(receive())
    strip_usage = ex.strip_usage
    pending = b""
    wait = 0.0
    try:
        while True:
            t_up = time.perf_counter()
            chunk = await resp.chunk()
            wait += time.perf_counter() - t_up
            if chunk is None:
                break
            chunks.append(chunk)
            if strip_usage:
                out, pending = _whole_events(pending, chunk)
                if out is None:
                    continue
            else:
                out = chunk
            if out:
                await send({"type": "http.response.body", "body": out, "more_body": True})
            if disconnected.done():
                ex.status, ex.error = 499, "client closed the stream"
                break
        if pending and ex.status != 499:
            await send({"type": "http.response.body", "body": pending, "more_body": True})
        if ex.status != 499:
            record.status = 200
            record.latency_ms = (time.perf_counter() - ex.t0) * 1000.0
            log.submit(record)
        await send({"type": "http.response.body", "body": b""})
    finally:
        disconnected.cancel()
        ex.upstream_wait += wait


def _whole_events(pending: bytes, chunk: bytes) -> tuple[bytes | None, bytes]:
    """The complete SSE events of `pending + chunk` without vLLM's usage-only event (None: no event is complete
    yet), and the incomplete rest."""
    if pending:
        chunk = pending + chunk
    rest = b""
    if not chunk.endswith(b"\n\n"):  # forward whole events only
        cut = chunk.rfind(b"\n\n")
        if cut < 0:
            return None, chunk
        chunk, rest = chunk[:cut + 2], chunk[cut + 2:]
    if b'"choices":[]' not in chunk and b'"choices": []' not in chunk:
        return chunk, rest
    kept = [e for e in chunk.split(b"\n\n") if not (e.startswith(b"data:") and any(m in e for m in _USAGE_MARKERS)
                                                   and b'"usage"' in e)]
    return b"\n\n".join(kept), rest
