"""Request ids and trace context: accepted or made, forwarded to vLLM, returned, stored with the exchange."""

from __future__ import annotations

import aiohttp
import pytest

from careloop.core.settings import Settings
from careloop.gateway.request_id import parse_traceparent, request_ids
from tests.gateway.fake_upstream import FakeUpstream
from tests.gateway.gateway_helpers import running_gateway
from tests.gateway.test_proxy import CHAT, MESSAGES, rows

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE}-00f067aa0ba902b7-01"


def test_client_ids_kept_when_valid_and_replaced_when_not() -> None:
    ids = request_ids("0" * 12 + "a" * 20, "req-42.a:b", PARENT)
    assert ids.request_id == "req-42.a:b" and ids.trace_id == TRACE and ids.sampled
    assert ids.span_id == "a" * 16 and ids.parent_span_id == "00f067aa0ba902b7"  # the gateway's own span
    assert ids.traceparent == f"00-{TRACE}-{ids.span_id}-01"
    made = request_ids("0193a1b2c3d4" + "e" * 20, "evil\r\nX-Injected: 1", "garbage")
    assert made.request_id == "0193a1b2c3d4" + "e" * 20 and made.trace_id == "0193a1b2c3d4" + "e" * 20
    assert request_ids("x" * 32, "a" * 129, None).request_id == "x" * 32


@pytest.mark.parametrize("value", [
    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
    f"00-{TRACE}-0000000000000000-01",  # all-zero parent
    f"ff-{TRACE}-00f067aa0ba902b7-01",  # forbidden version
    f"00-{TRACE[:-1]}-00f067aa0ba902b7-01", "", None])
def test_invalid_traceparent_is_ignored(value: str | None) -> None:
    assert parse_traceparent(value) is None


@pytest.mark.asyncio(loop_scope="session")
async def test_ids_forwarded_returned_and_stored(settings: Settings, fake: FakeUpstream) -> None:
    settings.upstream = fake.url
    async with running_gateway(settings) as (_gw, url), aiohttp.ClientSession() as client:
        async with client.post(url + CHAT, json={"model": "assistant", "messages": MESSAGES},
                               headers={"X-Request-ID": "clinic-7-req-1", "traceparent": PARENT}) as resp:
            assert resp.status == 200
            assert resp.headers["x-request-id"] == "clinic-7-req-1"
            returned = resp.headers["traceparent"]
        async with client.post(url + CHAT, json={"model": "assistant", "messages": MESSAGES,
                                                 "stream": True}) as resp:
            assert resp.status == 200
            await resp.read()
            made_id = resp.headers["x-request-id"]
            assert made_id == resp.headers["x-careloop-exchange-id"]
        async with client.post(url + CHAT, json={"model": "nope", "messages": MESSAGES},
                               headers={"X-Request-ID": "clinic-7-bad"}) as resp:
            assert resp.status == 404 and resp.headers["x-request-id"] == "clinic-7-bad"
    first = fake.headers[0]
    stored = {r.request_id: r for r in rows(settings)}
    # vLLM gets the client's id and the exchange id: unique per request even when a client reuses its id.
    assert first["X-Request-ID"] == f"clinic-7-req-1:{stored['clinic-7-req-1'].id}"
    assert first["traceparent"] == returned and returned.startswith(f"00-{TRACE}-")
    assert fake.headers[1]["X-Request-ID"] == made_id
    assert stored["clinic-7-req-1"].trace_id == TRACE
    assert stored[made_id].trace_id == made_id and stored[made_id].stream
    assert stored["clinic-7-bad"].status == 404
