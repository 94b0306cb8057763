"""The hot path: `POST /v1/chat/completions` → pick the target → relay to vLLM → hand raw bytes to the log.

Per request the gateway parses the request JSON once (it must rewrite `model`), picks the target, and relays
bytes. It never parses the response on this path: non-streamed bodies go back as they came, SSE chunks are
forwarded as each arrives. The only stream rewriting is dropping vLLM's trailing usage-only event when the
gateway asked for it (to log token counts) and the client did not.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from careloop.gateway.asgi import CLIENT_GONE, Receive, Scope, Send, read_body
from careloop.gateway.errors import GatewayError, bad_request, not_found, send_error, upstream_error
from careloop.gateway.failover import Breakers
from careloop.gateway.limits import check_generation_params
from careloop.gateway.ratelimit import charge_tokens, check_access
from careloop.gateway.request_id import RequestIds, request_ids
from careloop.gateway.routing import choose
from careloop.gateway.telemetry import gateway_span
from careloop.gateway.traffic_log import Record

if TYPE_CHECKING:
    from careloop.gateway.app import Gateway

_rand_bits = random.Random().getrandbits  # its own generator, seeded from os.urandom once
SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
               (b"x-accel-buffering", b"no")]
_USAGE_MARKERS = (b'"choices":[]', b'"choices": []')


class Upstreams:
    """The shared aiohttp client and the vLLM replicas it balances over (round robin over serving ones)."""

    def __init__(self, urls: list[str], connect_timeout_s: float, read_timeout_s: float, pool_size: int,
                 api_key: str | None = None, breakers: Breakers | None = None) -> None:
        self.urls = [u.rstrip("/") for u in urls]
        self.breakers = breakers or Breakers(self.urls)
        self.healthy = list(self.urls)
        self._rr = itertools.count()
        self.timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_s,
                                             sock_read=read_timeout_s)
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.pool_size = pool_size
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Open the shared client (one connection pool for the whole process)."""
        connector = aiohttp.TCPConnector(limit=self.pool_size, limit_per_host=0, ttl_dns_cache=300,
                                         keepalive_timeout=60)
        self.session = aiohttp.ClientSession(connector=connector, timeout=self.timeout, auto_decompress=False,
                                             skip_auto_headers=("User-Agent", "Accept-Encoding"))

    async def close(self) -> None:
        """Close the client and its connections."""
        if self.session is not None:
            await self.session.close()

    def order(self) -> list[str]:
        """Replicas to try for one request, round robin over the serving ones (all, if none is known yet).

        Only serving replicas are tried: they are the ones known to hold the adapters requests route to.
        """
        pool = self.healthy or self.urls
        if len(pool) == 1:
            return pool
        i = next(self._rr) % len(pool)
        return self.breakers.pick(pool[i:] + pool[:i])


def new_exchange_id() -> str:
    """A 32-hex id that sorts by time: 12 hex digits of epoch milliseconds, then 80 random bits.

    `random` rather than `os.urandom`: ids must be unique, not secret, and the syscall costs more than the
    rest of the id (measured ~30 µs under load here).
    """
    return f"{int(time.time() * 1000):012x}{_rand_bits(80):020x}"


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


def _strip_usage_events(data: bytes) -> bytes:
    """Complete SSE events without vLLM's usage-only event (the client did not ask for it)."""
    if b'"choices":[]' not in data and b'"choices": []' not in data:
        return data
    events = data.split(b"\n\n")
    kept = [e for e in events if not (e.startswith(b"data:") and any(m in e for m in _USAGE_MARKERS)
                                      and b'"usage"' in e)]
    return b"\n\n".join(kept)


async def chat_completions(gw: Gateway, scope: Scope, receive: Receive, send: Send) -> None:
    """Serve one chat completion (streamed or not) and log it."""
    t0 = time.perf_counter()
    created = time.time()
    exchange_id = new_exchange_id()
    settings = gw.settings
    length = user_header = session_header = rid_header = traceparent = None
    authorization: bytes | None = None
    for name, value in scope["headers"]:  # one pass over the headers the gateway reads
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
    ids = request_ids(exchange_id, rid_header, traceparent)
    id_header = [(b"x-careloop-exchange-id", exchange_id.encode()), *ids.response_headers()]
    try:
        key = await check_access(gw.keys, gw.limiter, authorization)
    except GatewayError as exc:  # 401 / 429: answered and counted, not logged (a flood must not fill the store)
        gw.metrics.count_request("none", exc.status, getattr(exc, "key_name", "none"))
        await send_error(send, exc, id_header + getattr(exc, "headers", list)())
        return
    key_name = key.name if key is not None else None
    if length is not None and length.isdigit() and int(length) > settings.gateway.max_body_bytes:
        await _reject(gw, send, GatewayError(413, f"request body over {settings.gateway.max_body_bytes} bytes",
                                             "invalid_request_error", "request_too_large"), id_header,
                      exchange_id, created, t0, ids=ids, key_name=key_name)
        return
    body = await read_body(receive, settings.gateway.max_body_bytes)
    if body is None:
        await _reject(gw, send, GatewayError(413, f"request body over {settings.gateway.max_body_bytes} bytes",
                                             "invalid_request_error", "request_too_large"), id_header,
                      exchange_id, created, t0, ids=ids, key_name=key_name)
        return
    req: dict[str, Any] = {}
    try:
        req = _validate(body)
        if req["model"] != settings.public_model:
            raise not_found(f"the model '{req['model']}' does not exist; this gateway serves "
                            f"'{settings.public_model}'", "model_not_found")
        check_generation_params(req, settings.gateway)
        routes = gw.routes
        if not routes.known:
            raise upstream_error(503, "the gateway has not reached vLLM yet; retry shortly",
                                 "upstream_unavailable")
    except GatewayError as exc:
        await _reject(gw, send, exc, id_header, exchange_id, created, t0, req, ids=ids, key_name=key_name)
        return

    user_id = req.get("user") or user_header or session_header
    choice = choose(routes, user_id, secret=gw.user_key_secret)
    stream = bool(req.get("stream"))
    strip_usage = False
    if stream:
        opts = req.get("stream_options") or {}
        if not opts.get("include_usage"):
            strip_usage = True
            req["stream_options"] = {**opts, "include_usage": True}
    public_model = req["model"]
    req["model"] = choice.target
    payload = orjson.dumps(req)
    sampled = gw.sampler.decide(choice.role)

    upstream_wait = 0.0
    status = 0
    error: str | None = None
    failure: GatewayError | None = None
    log = gw.traffic_log
    # The record goes to the log (its WAL first) before the last byte of the response goes out.
    record = Record(exchange_id, created, public_model, choice.target, choice.role, choice.user_key, req, None,
                    0, stream, sampled, 0.0, request_id=ids.request_id, trace_id=ids.trace_id, key_name=key_name)
    session = gw.upstreams.session
    assert session is not None
    started = False
    try:
        resp, wait = await send_upstream(gw, session, payload, ids.upstream_headers(gw.upstreams.headers))
        upstream_wait += wait
        completed = False
        try:
            status = resp.status
            ctype = resp.headers.get("Content-Type", "application/json").encode("latin-1")
            if not stream or status != 200 or not ctype.startswith(b"text/event-stream"):
                t_up = time.perf_counter()
                data = await resp.read()
                upstream_wait += time.perf_counter() - t_up
                record.response, record.status = data, status
                record.latency_ms = (time.perf_counter() - t0) * 1000.0
                log.submit(record)
                await send({"type": "http.response.start", "status": status,
                            "headers": [(b"content-type", ctype), (b"content-length", str(len(data)).encode()),
                                        *id_header]})
                started = True
                await send({"type": "http.response.body", "body": data})
            else:
                chunks: list[bytes] = []
                record.response = chunks
                await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS + id_header})
                started = True
                disconnected = asyncio.ensure_future(receive())
                pending = b""
                try:
                    iterator = resp.content.iter_any().__aiter__()
                    while True:
                        t_up = time.perf_counter()
                        try:
                            chunk = await iterator.__anext__()
                        except StopAsyncIteration:
                            upstream_wait += time.perf_counter() - t_up
                            break
                        upstream_wait += time.perf_counter() - t_up
                        chunks.append(chunk)
                        if strip_usage:
                            if pending:
                                chunk, pending = pending + chunk, b""
                            if not chunk.endswith(b"\n\n"):  # forward whole events only
                                cut = chunk.rfind(b"\n\n")
                                if cut < 0:
                                    pending = chunk
                                    continue
                                chunk, pending = chunk[:cut + 2], chunk[cut + 2:]
                            out = _strip_usage_events(chunk)
                        else:
                            out = chunk
                        if out:
                            await send({"type": "http.response.body", "body": out, "more_body": True})
                        if disconnected.done():
                            status, error = 499, "client closed the stream"
                            break
                    if pending and status != 499:
                        await send({"type": "http.response.body", "body": pending, "more_body": True})
                    if status != 499:
                        record.status = 200
                        record.latency_ms = (time.perf_counter() - t0) * 1000.0
                        log.submit(record)
                    await send({"type": "http.response.body", "body": b""})
                finally:
                    disconnected.cancel()
            completed = status != 499
        finally:
            if completed:
                resp.release()
            else:
                resp.close()  # stop vLLM generating for a client that left (or a failed read)
    except GatewayError as exc:
        status, error, failure = exc.status, exc.message, exc
    except (TimeoutError, aiohttp.ServerTimeoutError):
        status, error = 504, "the model server sent nothing within the read timeout"
        failure = upstream_error(504, error, "upstream_timeout")
    except aiohttp.ClientError as exc:
        status, error = 502, f"the model server broke the response off ({_error_kind(exc)})"
        failure = upstream_error(502, error, "bad_gateway")
    except asyncio.CancelledError:
        if not scope.get(CLIENT_GONE):
            raise
        status, error = 499, "client disconnected; upstream request cancelled"

    total = time.perf_counter() - t0
    if record.status == 0:  # not logged yet: an error, or a client that left
        record.status, record.error, record.latency_ms = status, error, total * 1000.0
        log.submit(record)
    if failure is not None:
        await _fail_late(send, started, failure, id_header)
    metrics = gw.metrics
    metrics.overhead.observe(max(total - upstream_wait, 0.0))
    metrics.observe_upstream(choice.target, upstream_wait)
    metrics.count_request(choice.target, status, key_name or "none")
    if status == 200:
        charge_tokens(gw.limiter, key, record.response)
    if gw.tracing:
        gateway_span(ids, exchange_id, created, total, choice.target, choice.role, status, key_name, stream, error)
    if status == 499:
        metrics.client_disconnects.inc()
        return
    if log.depth > log.high_water:
        await log.wait_for_room()


async def send_upstream(gw: Gateway, session: aiohttp.ClientSession, payload: bytes,
                        headers: dict[str, str]) -> tuple[aiohttp.ClientResponse, float]:
    """POST to the first replica that answers, and the time spent waiting; failover happens only here.

    Nothing has gone to the client yet, so a replica whose connection fails (refused, reset, closed before a
    response) or that answers 503 is retried on the next one; its breaker counts the failure. A read timeout
    is not retried (the replica may be busy generating). The last replica's 503 is passed through.
    """
    breakers = gw.upstreams.breakers
    order = gw.upstreams.order()
    last_exc: BaseException | None = None
    wait = 0.0
    for i, url in enumerate(order):
        t_up = time.perf_counter()
        try:
            resp = await session.post(url + "/v1/chat/completions", data=payload, headers=headers)
        except (aiohttp.ServerTimeoutError, TimeoutError, aiohttp.ClientResponseError):
            raise  # busy generating, or it answered something malformed (502): not a connection failure
        except aiohttp.ClientError as exc:  # no response from this replica: try the next one
            wait += time.perf_counter() - t_up
            breakers.failure(url)
            last_exc = exc
            continue
        wait += time.perf_counter() - t_up
        if resp.status == 503 and i + 1 < len(order):
            breakers.failure(url)
            resp.release()
            continue
        if resp.status == 503:
            breakers.failure(url)
        else:
            breakers.success(url)
        return resp, wait
    raise upstream_error(503, f"vLLM is unreachable: {type(last_exc).__name__}", "upstream_unavailable")


def _error_kind(exc: BaseException) -> str:
    """What went wrong upstream, by kind only: never the exception's text (it can hold headers or addresses)."""
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "truncated body"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "connection closed"
    if isinstance(exc, aiohttp.ClientResponseError):
        return "malformed response"
    if isinstance(exc, aiohttp.ClientOSError):
        return "connection error"
    return "protocol error"


async def _fail_late(send: Send, started: bool, exc: GatewayError, headers: list[tuple[bytes, bytes]]) -> None:
    """Report an upstream failure: as a response if none has started, else as a final SSE error event."""
    if not started:
        await send_error(send, exc, headers)
        return
    with contextlib.suppress(Exception):
        await send({"type": "http.response.body", "body": b"data: " + exc.body() + b"\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b""})


async def _reject(gw: Gateway, send: Send, exc: GatewayError, headers: list[tuple[bytes, bytes]],
                  exchange_id: str | None = None, created: float = 0.0, t0: float = 0.0,
                  req: dict[str, Any] | None = None, ids: RequestIds | None = None,
                  key_name: str | None = None) -> None:
    """Answer a request the gateway refuses before proxying; counted, and logged when it got that far."""
    gw.metrics.count_request("none", exc.status, key_name or "none")
    if exchange_id is not None:
        req = req or {}
        stream = req.get("stream")
        gw.traffic_log.submit(Record(
            exchange_id, created, gw.settings.public_model, "none", "stable", None, req, None, exc.status,
            stream is True, False, (time.perf_counter() - t0) * 1000.0, exc.message,
            ids.request_id if ids else None, ids.trace_id if ids else None, key_name))
    await send_error(send, exc, headers)
