"""OpenTelemetry spans, exported over OTLP/HTTP only when an endpoint is configured.

Nothing here imports OpenTelemetry until `configure` is called with an endpoint (or a test's exporter): with
no endpoint the gateway's request path pays one boolean test. Spans are recorded after the fact with the ids
careloop already has, so a trace links up without passing context objects around:

- the gateway's span (`gateway → vLLM`) has the request's trace id and the span id the gateway sent vLLM in
  `traceparent` (`gateway_span_id`: the last 16 hex digits of the exchange id), under the client's parent
  span when it sent one;
- the judge worker's span (`judge verdict`) is a child of that gateway span, found from the exchange's stored
  `trace_id` and id, so a client's trace runs from its request to the verdict it received;
- each monitor job (`monitor <job>`) and each retrain run (`retrain run`) is a root span of its own.
"""

from __future__ import annotations

import contextvars
import logging
from typing import Any

log = logging.getLogger("careloop.telemetry")
_provider: Any = None
_tracer: Any = None
_next_ids: contextvars.ContextVar[tuple[int | None, int | None]] = contextvars.ContextVar(
    "careloop_next_span_ids", default=(None, None))


def enabled() -> bool:
    """Whether spans are recorded in this process."""
    return _tracer is not None


def configure(endpoint: str | None, service_name: str, exporter: Any = None) -> bool:
    """Record spans for `service_name`, exported to `endpoint` (OTLP/HTTP) or to `exporter` (tests).

    Returns whether tracing is on; with neither an endpoint nor an exporter nothing is imported.
    """
    global _provider, _tracer
    if not endpoint and exporter is None:
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

    class _KnownIds(RandomIdGenerator):
        """Use the trace and span ids careloop already chose for the span being recorded."""

        def generate_span_id(self) -> int:
            span = _next_ids.get()[1]
            return span if span is not None else super().generate_span_id()

        def generate_trace_id(self) -> int:
            trace = _next_ids.get()[0]
            return trace if trace is not None else super().generate_trace_id()

    if _provider is not None:
        _provider.shutdown()
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}), id_generator=_KnownIds())
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        url = endpoint.rstrip("/") if endpoint else ""
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(
            endpoint=url if url.endswith("/v1/traces") else url + "/v1/traces")))
    _provider, _tracer = provider, provider.get_tracer("careloop")
    log.info("OpenTelemetry spans of %s exported to %s", service_name, endpoint or type(exporter).__name__)
    return True


def shutdown() -> None:
    """Flush and stop exporting (process exit)."""
    global _provider, _tracer
    if _provider is not None:
        _provider.shutdown()
    _provider = _tracer = None


def record_span(name: str, start_ns: int, end_ns: int, attributes: dict[str, Any], *,
                trace_id: str | None = None, span_id: str | None = None, parent_span_id: str | None = None,
                sampled: bool = True, error: str | None = None) -> None:
    """Record one finished span with the given ids (hex); a parent id makes it a child in that trace."""
    if _tracer is None:
        return
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, Status, StatusCode, TraceFlags

    context = None
    if trace_id and parent_span_id:
        parent = SpanContext(int(trace_id, 16), int(parent_span_id, 16), is_remote=True,
                             trace_flags=TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT))
        context = trace.set_span_in_context(NonRecordingSpan(parent))
    token = _next_ids.set((int(trace_id, 16) if trace_id else None, int(span_id, 16) if span_id else None))
    try:
        span = _tracer.start_span(name, context=context, start_time=start_ns,
                                  attributes={k: v for k, v in attributes.items() if v is not None})
    finally:
        _next_ids.reset(token)
    if error:
        span.set_status(Status(StatusCode.ERROR, error))
    span.end(end_time=end_ns)


def gateway_span_id(exchange_id: str) -> str:
    """The gateway's span id for an exchange: its last 16 hex digits (never all zero)."""
    tail = exchange_id[-16:].rjust(16, "0")
    return tail if tail.strip("0") else "0" * 15 + "1"


def gateway_span(ids: Any, exchange_id: str, created: float, seconds: float, target: str, role: str,
                 status: int, key_name: str | None, stream: bool, error: str | None) -> None:
    """The gateway's span of one request (`ids`: its `RequestIds`)."""
    start = int(created * 1e9)
    record_span("gateway → vLLM", start, start + int(seconds * 1e9), {
        "careloop.exchange_id": exchange_id, "careloop.request_id": ids.request_id, "careloop.target": target,
        "careloop.role": role, "careloop.client_key": key_name, "http.response.status_code": status,
        "careloop.stream": stream}, trace_id=ids.trace_id, span_id=ids.span_id,
        parent_span_id=ids.parent_span_id, sampled=ids.sampled, error=error if status >= 500 else None)
