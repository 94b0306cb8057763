"""Request ids and W3C trace context: accept the client's `X-Request-ID` and `traceparent`, or make them.

A request id the client sends is kept when it is a plain token (up to 128 characters of letters, digits and
`-._:`); anything else is replaced, so a stored or echoed id can never carry markup, newlines or a payload.
The gateway takes part in the trace: it keeps the client's trace id (or makes one: the exchange id, which is
already 32 random-enough hex digits) and sends vLLM a `traceparent` naming its own span as the parent. That
span's id is the last 16 hex digits of the exchange id (random bits), so later spans (the judge's verdict) can
name it as their parent from the stored exchange alone (`careloop.core.telemetry.gateway_span_id`, which the
monitor uses too).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from careloop.core.telemetry import gateway_span_id

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


@dataclass(frozen=True, slots=True)
class RequestIds:
    """The ids of one request: what is stored, forwarded to vLLM and returned to the client."""

    request_id: str
    trace_id: str  # 32 hex
    span_id: str  # 16 hex: the gateway's own span, the parent of vLLM's work
    sampled: bool
    parent_span_id: str | None = None  # the client's span, when it sent a traceparent
    exchange_id: str = ""

    @property
    def traceparent(self) -> str:
        """The W3C `traceparent` the gateway sends upstream and returns to the client."""
        return f"00-{self.trace_id}-{self.span_id}-{'01' if self.sampled else '00'}"

    def response_headers(self) -> list[tuple[bytes, bytes]]:
        """The headers every response to this request carries."""
        return [(b"x-request-id", self.request_id.encode()), (b"traceparent", self.traceparent.encode())]

    @property
    def upstream_request_id(self) -> str:
        """The id vLLM gets: the client's request id and the exchange id, so it is unique per request.

        vLLM names its request after `X-Request-ID` (`chatcmpl-<id>`) and aborts by that name when a client
        leaves: two concurrent requests reusing one client id must not share it.
        """
        if not self.exchange_id or self.request_id == self.exchange_id:
            return self.request_id
        return f"{self.request_id}:{self.exchange_id}"

    def upstream_header_lines(self) -> bytes:
        """The request id and trace context as header lines, for the request to vLLM (both are plain tokens)."""
        return f"X-Request-ID: {self.upstream_request_id}\r\ntraceparent: {self.traceparent}\r\n".encode()


def parse_traceparent(value: str | None) -> tuple[str, str, bool] | None:
    """(trace id, parent span id, sampled) of a valid version-00-compatible `traceparent`, else None."""
    if not value:
        return None
    m = _TRACEPARENT.fullmatch(value.strip().lower()[:55])
    if m is None or m.group(1) == "ff" or m.group(2) == _ZERO_TRACE or m.group(3) == _ZERO_SPAN:
        return None
    return m.group(2), m.group(3), bool(int(m.group(4), 16) & 1)


def request_ids(exchange_id: str, request_id: str | None, traceparent: str | None) -> RequestIds:
    """The ids for a request, from the client's headers where they are valid, else made from the exchange id."""
    rid = request_id.strip() if request_id else ""
    if not _REQUEST_ID.fullmatch(rid):
        rid = exchange_id
    parent = parse_traceparent(traceparent)
    if parent is None:
        return RequestIds(rid, exchange_id, gateway_span_id(exchange_id), True, None, exchange_id)
    trace_id, parent_span, sampled = parent
    return RequestIds(rid, trace_id, gateway_span_id(exchange_id), sampled, parent_span, exchange_id)
