"""Hostile input: limits on the request head, slow clients, client disconnects, and generation parameters.

`guarded_protocol` makes uvicorn's httptools protocol enforce, before any byte reaches the parser's buffers:
a request line of at most `max_request_line_bytes` (414), at most `max_header_count` headers and
`max_header_bytes` of head in all (431), the whole head within `header_timeout_s` of its first byte (or of
the connection) and the whole body within `body_timeout_s` of the head (408). A rejected connection gets its
answer, its remaining input is read and thrown away for at most a second (so the client sees the answer rather
than a reset), then it is closed. A client that disconnects before its response ended has its request task
cancelled at once (`CLIENT_GONE` set in its scope): the relay stops waiting on vLLM and closes the upstream
connection, which makes vLLM abort the generation.

`check_generation_params` validates and clamps what the gateway forwards to vLLM.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from careloop.core.settings import GatewaySettings
from careloop.gateway.asgi import CLIENT_GONE
from careloop.gateway.errors import bad_request, error_body
from careloop.gateway.metrics import GatewayMetrics

_REASONS = {408: b"Request Timeout", 414: b"URI Too Long", 431: b"Request Header Fields Too Large"}
_LINGER_S = 1.0
_LINGER_BYTES = 256 << 10  # read and drop at most this much after refusing a request, then hang up


@dataclass(frozen=True, slots=True)
class HeadLimits:
    """What one connection may send before the gateway answers."""

    max_request_line_bytes: int = 8192
    max_header_count: int = 100
    max_header_bytes: int = 32768
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0

    @classmethod
    def of(cls, g: GatewaySettings) -> HeadLimits:
        """The limits in the gateway settings."""
        return cls(g.max_request_line_bytes, g.max_header_count, g.max_header_bytes, g.header_timeout_s,
                   g.body_timeout_s)


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a request the gateway refuses."""


def raw_error(status: int, message: str, code: str) -> bytes:
    """A whole HTTP/1.1 error response with an OpenAI error body, closing the connection."""
    body = error_body(message, "invalid_request_error", code)
    return (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
            % (status, _REASONS[status], len(body))) + body


def guarded_protocol(limits: HeadLimits, metrics: GatewayMetrics | None = None) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with the head limits, slow-client timeouts and disconnect cancellation."""
    head_cap = limits.max_request_line_bytes + limits.max_header_bytes

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        _in_head = True
        _head_bytes = 0
        _url_bytes = 0
        _header_count = 0
        _refused: tuple[int, str, str] | None = None
        _discarding = False
        _discarded = 0
        _timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm(limits.header_timeout_s, "header_timeout")

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete:
                task = getattr(cycle, "careloop_task", None)
                if task is not None and not task.done():
                    cycle.scope[CLIENT_GONE] = True  # type: ignore[literal-required]
                    task.cancel()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._discarding:
                self._discarded += len(data)
                if self._discarded > _LINGER_BYTES:
                    self.transport.close()  # a flood: stop reading it
                return
            if self._in_head:
                room = head_cap - self._head_bytes
                if len(data) > room:
                    # Feed only what the head may still hold; the rest only if the head ended within it.
                    self._head_bytes = head_cap
                    self._feed(data[:room])
                    if self._discarding or self.transport.is_closing():
                        return
                    if self._in_head:
                        self._refuse(431, "request headers too large", "request_header_fields_too_large")
                        return
                    self._feed(data[room:])
                    return
                self._head_bytes += len(data)
            self._feed(data)

        def _feed(self, data: bytes) -> None:
            try:
                super().data_received(data)
            except _Refused:  # raised by httptools versions that do not wrap callback errors
                self._answer_refusal()

        def send_400_response(self, msg: str) -> None:
            if self._refused is not None:  # the parser stopped because a callback refused the request
                self._answer_refusal()
                return
            super().send_400_response(msg)

        def _answer_refusal(self) -> None:
            assert self._refused is not None
            self._refuse(*self._refused)

        def _refuse(self, status: int, message: str, code: str) -> None:
            if metrics is not None:
                metrics.rejected_connections.labels(code).inc()
            self._disarm()
            self._discarding = True
            self.transport.write(raw_error(status, message, code))
            self.loop.call_later(_LINGER_S, self.transport.close)

        def _arm(self, delay: float, what: str) -> None:
            self._disarm()
            self._timer = self.loop.call_later(delay, self._expired, what)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _expired(self, what: str) -> None:
            self._timer = None
            if self.transport.is_closing() or self._discarding:
                return
            if what == "header_timeout" and self._head_bytes == 0 and self.cycle is None:
                self.transport.close()  # connected and never sent a byte: just hang up
                return
            if self.cycle is not None and self.cycle.response_started:
                return
            self._refuse(408, f"the request {'headers' if what == 'header_timeout' else 'body'} did not arrive "
                         "in time", what)
            self.transport.close()

        # Parser callbacks.
        def on_message_begin(self) -> None:
            self._in_head = True
            self._url_bytes = self._header_count = 0
            self._refused = None
            if self._timer is None:
                self._arm(limits.header_timeout_s, "header_timeout")
            super().on_message_begin()

        def on_url(self, url: bytes) -> None:
            self._url_bytes += len(url)
            if self._url_bytes > limits.max_request_line_bytes:
                self._refused = (414, "request line too long", "request_uri_too_long")
                raise _Refused
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._header_count += 1
            if self._header_count > limits.max_header_count:
                self._refused = (431, "too many request headers", "request_header_fields_too_large")
                raise _Refused
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._head_bytes = 0
            self._arm(limits.body_timeout_s, "body_timeout")
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._disarm()
            super().on_message_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._in_head = True

        def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
            task = self.loop.create_task(cycle.run_asgi(app))
            task.add_done_callback(self.tasks.discard)
            self.tasks.add(task)
            cycle.careloop_task = task  # type: ignore[attr-defined]

    GuardedHttpToolsProtocol.__name__ = "GuardedHttpToolsProtocol"
    return GuardedHttpToolsProtocol


# vLLM request fields that change how the prompt is rendered: a client could swap the system prompt's template
# or inject a Jinja template. Stripped unless `gateway.allow_template_kwargs`.
TEMPLATE_FIELDS = frozenset({"chat_template", "chat_template_kwargs", "add_generation_prompt",
                             "continue_final_message", "add_special_tokens", "documents", "mm_processor_kwargs",
                             "echo", "return_tokens_as_token_ids", "prompt_logprobs"})


def _int(req: dict[str, Any], name: str, low: int, high: int | None = None) -> int | None:
    value = req.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"'{name}' must be an integer", "invalid_type", name)
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise bad_request(f"'{name}' must be {bound}", "invalid_value", name)
    return value


def _number(req: dict[str, Any], name: str, low: float, high: float) -> None:
    value = req.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad_request(f"'{name}' must be a number", "invalid_type", name)
    if not low <= value <= high:
        raise bad_request(f"'{name}' must be between {low} and {high}", "invalid_value", name)


def check_generation_params(req: dict[str, Any], g: GatewaySettings) -> None:
    """Validate the generation parameters the gateway forwards (400 on a bad one), clamp token limits to the
    model's, and strip template fields unless allowed. Changes `req` in place."""
    _int(req, "n", 1, g.max_n)
    for name in ("max_tokens", "max_completion_tokens"):
        value = _int(req, name, 1)
        if value is not None and value > g.model_max_tokens:
            req[name] = g.model_max_tokens
    logprobs = req.get("logprobs")
    if logprobs is not None and not isinstance(logprobs, bool):
        raise bad_request("'logprobs' must be a boolean", "invalid_type", "logprobs")
    _int(req, "top_logprobs", 0, g.max_logprobs)
    _number(req, "temperature", 0.0, 2.0)
    _number(req, "top_p", 0.0, 1.0)
    _number(req, "presence_penalty", -2.0, 2.0)
    _number(req, "frequency_penalty", -2.0, 2.0)
    _int(req, "best_of", 1, g.max_n)
    if not g.allow_template_kwargs:
        for name in TEMPLATE_FIELDS.intersection(req):
            del req[name]

