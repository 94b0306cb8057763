"""The hot path: `POST /v1/chat/completions` in four steps: read → forward → relay → record.

Per request the gateway parses the request JSON once (it must rewrite `model`), picks the target, and relays
bytes. It never parses the response on this path: non-streamed bodies go back as they came, SSE chunks are
forwarded as each arrives (`careloop/gateway/relay.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import orjson

from careloop.core.telemetry import gateway_span
from careloop.gateway.asgi import CLIENT_GONE, Receive, Scope, Send, read_body
from careloop.gateway.errors import GatewayError, bad_request, not_found, send_error, upstream_error
from careloop.gateway.exchange import Exchange, new_exchange_id
from careloop.gateway.limits import check_generation_params
from careloop.gateway.ratelimit import charge_tokens, check_access
from careloop.gateway.record import Record
from careloop.gateway.relay import relay
from careloop.gateway.request_id import request_ids
from careloop.gateway.routing import choose
from careloop.gateway.state import GatewayState
from careloop.gateway.upstream_client import UpstreamError


async def chat_completions(gw: GatewayState, scope: Scope, receive: Receive, send: Send) -> None:
    """Serve one chat completion (streamed or not) and log it: read → route → forward and relay → record."""
    read = await _read(gw, scope, receive, send)
    if read is None:
        return
    ex, req = read
    log = gw.traffic_log
    if log.depth > log.high_water:  # backpressure: hold this request (not the next one) until the log has room
        await log.wait_for_room()
    record, payload = _route(gw, ex, req)
    failure = await _forward(gw, ex, record, payload, scope, receive, send)
    await _record(gw, ex, record, failure, send)


async def _read(gw: GatewayState, scope: Scope, receive: Receive,
                send: Send) -> tuple[Exchange, dict[str, Any]] | None:
    """Read: the caller's key and rate limit, then the body and its checks; None once a refusal is answered."""
    t0 = time.perf_counter()
    created = time.time()
    exchange_id = new_exchange_id()
    length, user_header, rid_header, traceparent, authorization = _headers(scope)
    ids = request_ids(exchange_id, rid_header, traceparent)
    ex = Exchange(t0, created, exchange_id, ids,
                  [(b"x-careloop-exchange-id", exchange_id.encode()), *ids.response_headers()], user_header)
    try:
        ex.key = await check_access(gw.keys, gw.limiter, authorization)
    except GatewayError as exc:  # 401 / 429: answered and counted, not logged (a flood must not fill the store)
        gw.metrics.count_request("none", exc.status, getattr(exc, "key_name", "none"))
        await send_error(send, exc, ex.id_header + getattr(exc, "headers", list)())
        return None
    ex.key_name = ex.key.name if ex.key is not None else None
    limit = gw.settings.gateway.max_body_bytes
    body = None
    if length is None or not length.isdigit() or int(length) <= limit:
        body = await read_body(receive, limit)
    if body is None:
        await _reject(gw, send, GatewayError(413, f"request body over {limit} bytes", "invalid_request_error",
                                             "request_too_large"), ex)
        return None
    req: dict[str, Any] = {}
    try:
        req = _validate(body)
        _check_servable(gw, req)
    except GatewayError as exc:
        await _reject(gw, send, exc, ex, req)
        return None
    return ex, req


def _headers(scope: Scope) -> tuple[str | None, str | None, str | None, str | None, bytes | None]:
    """(content-length, user, request id, traceparent, authorization) in one pass over the request headers."""
    length = user_header = session_header = rid_header = traceparent = None
    authorization: bytes | None = None
    for name, value in scope["headers"]:
        if name == b"content-length":
            length = value.decode("latin-1")
        elif name == b"x-user-id":
            user_header = value.decode("utf-8", "replace")
        elif name == b"x-session-id":
            session_header = value.decode("utf-8", "replace")
        elif name == b"x-request-id":
            rid_header = value.decode("latin-1")
        elif name == b"traceparent":
            traceparent = value.decode("latin-1")
        elif name == b"authorization":
            authorization = value
    return length, user_header or session_header, rid_header, traceparent, authorization


def _validate(body: bytes) -> dict[str, Any]:
    """The request as a dict, or a 400 explaining what is wrong with it."""
    try:
        req = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}", "invalid_json") from None
    if not isinstance(req, dict):
        raise bad_request("the request body must be a JSON object", "invalid_type")
    messages = req.get("messages")
    if messages is None:
        raise bad_request("'messages' is required", "missing_required_parameter", "messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty array", "invalid_type", "messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise bad_request(f"messages[{i}] must be an object with a string 'role'", "invalid_type",
                              f"messages[{i}]")
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise bad_request(f"messages[{i}].content must be a string or an array of parts",
                              "invalid_type", f"messages[{i}].content")
    model = req.get("model")
    if model is None:
        raise bad_request("'model' is required", "missing_required_parameter", "model")
    if not isinstance(model, str):
        raise bad_request("'model' must be a string", "invalid_type", "model")
    stream = req.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise bad_request("'stream' must be a boolean", "invalid_type", "stream")
    user = req.get("user")
    if user is not None and not isinstance(user, str):
        raise bad_request("'user' must be a string", "invalid_type", "user")
    opts = req.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise bad_request("'stream_options' must be an object", "invalid_type", "stream_options")
    return req


def _check_servable(gw: GatewayState, req: dict[str, Any]) -> None:
    """404 for another model, 400 for generation parameters out of bounds, 503 while vLLM was never reached."""
    settings = gw.settings
    if req["model"] != settings.public_model:
        raise not_found(f"the model '{req['model']}' does not exist; this gateway serves "
                        f"'{settings.public_model}'", "model_not_found")
    check_generation_params(req, settings.gateway)
    if not gw.routes.known:
        raise upstream_error(503, "the gateway has not reached vLLM yet; retry shortly", "upstream_unavailable")


def _route(gw: GatewayState, ex: Exchange, req: dict[str, Any]) -> tuple[Record, bytes]:
    """Pick stable or canary for this user; the exchange's record and the request rewritten for the target."""
    choice = choose(gw.routes, req.get("user") or ex.user_header, secret=gw.user_key_secret)
    stream = bool(req.get("stream"))
    if stream:
        opts = req.get("stream_options") or {}
        if not opts.get("include_usage"):
            ex.strip_usage = True
            req["stream_options"] = {**opts, "include_usage": True}
    public_model = req["model"]
    req["model"] = choice.target
    payload = orjson.dumps(req)
    sampled = gw.sampler.decide(choice.role)
    record = Record(ex.id, ex.created, public_model, choice.target, choice.role, choice.user_key, req, None, 0,
                    stream, sampled, 0.0, request_id=ex.ids.request_id, trace_id=ex.ids.trace_id,
                    key_name=ex.key_name)
    return record, payload


async def _forward(gw: GatewayState, ex: Exchange, record: Record, payload: bytes, scope: Scope,
                   receive: Receive, send: Send) -> GatewayError | None:
    """Forward to a replica and relay its answer; what failed upstream comes back as the error to report."""
    upstreams = gw.upstreams
    try:
        resp, wait = await upstreams.post(payload, ex.ids.upstream_header_lines())
        ex.upstream_wait += wait
        await relay(ex, record, resp, receive, send, gw.traffic_log)
    except GatewayError as exc:
        ex.status, ex.error = exc.status, exc.message
        return exc
    except TimeoutError:
        ex.status, ex.error = 504, "the model server sent nothing within the read timeout"
        return upstream_error(504, ex.error, "upstream_timeout")
    except UpstreamError as exc:  # its kind only: never the exception's text (it could hold an address)
        ex.status, ex.error = 502, f"the model server broke the response off ({exc.kind})"
        return upstream_error(502, ex.error, "bad_gateway")
    except asyncio.CancelledError:
        if not scope.get(CLIENT_GONE):
            raise
        ex.status, ex.error = 499, "client disconnected; upstream request cancelled"
    return None


async def _record(gw: GatewayState, ex: Exchange, record: Record, failure: GatewayError | None,
                  send: Send) -> None:
    """Record: log the exchange if the relay did not, report a late failure, count, trace."""
    total = time.perf_counter() - ex.t0
    log = gw.traffic_log
    if record.status == 0:  # not logged yet: an error, or a client that left
        record.status, record.error, record.latency_ms = ex.status, ex.error, total * 1000.0
        log.submit(record)
    if failure is not None:
        await _fail_late(send, ex.started, failure, ex.id_header)
    metrics = gw.metrics
    status = ex.status
    metrics.overhead.observe(max(total - ex.upstream_wait, 0.0))
    metrics.observe_upstream(record.target, ex.upstream_wait)
    metrics.count_request(record.target, status, ex.key_name or "none")
    if status == 200:
        charge_tokens(gw.limiter, ex.key, record.response)
    if gw.tracing:
        gateway_span(ex.ids, ex.id, ex.created, total, record.target, record.role, status, ex.key_name,
                     record.stream, ex.error)
    if status == 499:
        metrics.client_disconnects.inc()


async def _fail_late(send: Send, started: bool, exc: GatewayError, headers: list[tuple[bytes, bytes]]) -> None:
    """Report an upstream failure: as a response if none has started, else as a final SSE error event."""
    if not started:
        await send_error(send, exc, headers)
        return
    with contextlib.suppress(Exception):
        await send({"type": "http.response.body", "body": b"data: " + exc.body() + b"\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b""})


async def _reject(gw: GatewayState, send: Send, exc: GatewayError, ex: Exchange,
                  req: dict[str, Any] | None = None) -> None:
    """Answer a request the gateway refuses before proxying; counted and logged."""
    gw.metrics.count_request("none", exc.status, ex.key_name or "none")
    req = req or {}
    stream = req.get("stream")
    gw.traffic_log.submit(Record(
        ex.id, ex.created, gw.settings.public_model, "none", "stable", None, req, None, exc.status,
        stream is True, False, (time.perf_counter() - ex.t0) * 1000.0, exc.message, ex.ids.request_id,
        ex.ids.trace_id, ex.key_name))
    await send_error(send, exc, ex.id_header)
