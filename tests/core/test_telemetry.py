"""OpenTelemetry spans: a client's trace runs from its request through the gateway to the judge's verdict
(in-memory exporter, then encoded to the OTLP protobuf and parsed back with the protocol's own classes); the
gateway's span id follows from the exchange id; the monitor's jobs get spans; with no endpoint nothing of
OpenTelemetry is imported."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from careloop.core import telemetry
from careloop.core.migrations import upgrade
from careloop.core.settings import Settings
from careloop.core.store import make_engine
from careloop.monitor.worker import JudgeWorker
from tests.gateway.fake_upstream import FakeUpstream
from tests.gateway.gateway_helpers import running_gateway
from tests.gateway.test_proxy import CHAT, MESSAGES
from tests.monitor._monitor_fixtures import RuleJudge

ROOT = Path(__file__).resolve().parents[2]
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


@pytest.fixture
def exporter() -> Iterator[object]:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    mem = InMemorySpanExporter()
    assert telemetry.configure(None, "careloop-test", exporter=mem)
    yield mem
    telemetry.shutdown()


@pytest.mark.asyncio(loop_scope="session")
async def test_trace_from_client_request_to_verdict(settings: Settings, exporter: object) -> None:
    fake = FakeUpstream()
    await fake.start()
    settings.upstream = fake.url
    settings.sample_rate = 1.0
    upgrade(settings.database_url or "")
    try:
        async with running_gateway(settings) as (gw, url), aiohttp.ClientSession() as client:
            assert gw.tracing
            async with client.post(url + CHAT, json={"model": "assistant", "messages": MESSAGES},
                                   headers={"traceparent": f"00-{TRACE}-{CLIENT_SPAN}-01"}) as resp:
                assert resp.status == 200
                exchange_id = resp.headers["x-careloop-exchange-id"]
    finally:
        await fake.stop()
    engine = make_engine(settings.database_url or "")
    worker = JudgeWorker(engine, {"ref": RuleJudge("ref", lambda i: (0, "Accept"))}, reference="ref", backoff_s=0)
    report = await worker.run_once()
    assert report.verdicts == 1
    await worker.aclose()
    engine.dispose()

    spans = exporter.get_finished_spans()  # type: ignore[attr-defined]
    by_name = {s.name: s for s in spans}
    gw_span, verdict = by_name["gateway → vLLM"], by_name["judge verdict"]
    assert f"{gw_span.context.trace_id:032x}" == TRACE
    assert f"{gw_span.parent.span_id:016x}" == CLIENT_SPAN  # under the client's span
    assert f"{gw_span.context.span_id:016x}" == fake.headers[0]["traceparent"].split("-")[2]  # what vLLM saw
    assert gw_span.attributes["careloop.exchange_id"] == exchange_id
    assert gw_span.attributes["http.response.status_code"] == 200
    assert verdict.context.trace_id == gw_span.context.trace_id
    assert verdict.parent.span_id == gw_span.context.span_id  # the verdict hangs under the request
    assert verdict.attributes["careloop.judge"] == "ref"

    # The OTLP wire format: encode as the exporter does, parse back with the protocol's own message classes.
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    wire = ExportTraceServiceRequest.FromString(encode_spans([gw_span, verdict]).SerializeToString())
    decoded = [s for rs in wire.resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert {s.trace_id.hex() for s in decoded} == {TRACE}
    (v,) = [s for s in decoded if s.name == "judge verdict"]
    assert v.parent_span_id.hex() == f"{gw_span.context.span_id:016x}"
    resource = {a.key: a.value.string_value for a in wire.resource_spans[0].resource.attributes}
    assert resource["service.name"] == "careloop-test"


def test_gateway_span_id_is_the_exchange_ids_tail_and_never_zero() -> None:
    assert telemetry.gateway_span_id("0193a1b2c3d4" + "e" * 20) == "e" * 16
    assert telemetry.gateway_span_id("abc") == "0" * 13 + "abc"  # short ids are padded
    assert telemetry.gateway_span_id("f" * 16 + "0" * 16) == "0" * 15 + "1"  # all zero is not a valid span id


def test_monitor_jobs_get_spans(settings: Settings, exporter: object) -> None:
    from careloop.monitor.loop import MonitorService
    from tests.monitor._monitor_fixtures import store

    engine = store(settings.database_url or "")
    service = MonitorService.create(settings, engine=engine, judges={"distilled": RuleJudge(
        "distilled", lambda i: (0, "Accept"))}, stable_adapter=lambda: "a")
    service.refresh_job()
    service.trigger_job()
    names = [s.name for s in exporter.get_finished_spans()]  # type: ignore[attr-defined]
    assert "monitor windows" in names and "monitor triggers" in names
    engine.dispose()


def test_no_endpoint_no_import() -> None:
    code = ("import sys, asyncio\n"
            "from careloop.core.settings import Settings\n"
            "from careloop.gateway.app import create_app\n"
            "import careloop.monitor.worker, careloop.monitor.loop\n"
            "gw = create_app(Settings(database_url='sqlite://'))\n"
            "assert not gw.tracing\n"
            "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
