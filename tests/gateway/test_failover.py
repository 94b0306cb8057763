"""Failover across vLLM replicas: retry before the first byte (never after), per-replica circuit breakers,
the replica-up gauge and readiness; unit tests of the breaker, then a gateway with fake and real-process
upstreams (one killed under load)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import aiohttp.web
import pytest

from careloop.core.settings import Settings
from careloop.gateway.failover import Breakers
from tests.conftest import free_port
from tests.gateway.fake_upstream import FakeUpstream
from tests.gateway.gateway_helpers import running_gateway
from tests.gateway.test_proxy import CHAT, MESSAGES

ROOT = Path(__file__).resolve().parents[2]
BODY = {"model": "assistant", "messages": MESSAGES}


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_breaker_opens_after_consecutive_failures_and_probes_half_open() -> None:
    clock, changes = Clock(), []
    b = Breakers(["a", "b"], failures=3, open_s=5.0, on_change=lambda u, up: changes.append((u, up)),
                 clock=clock)
    assert changes == [("a", True), ("b", True)]
    b.failure("a")
    b.failure("a")
    b.success("a")  # not consecutive: the count starts again
    b.failure("a")
    b.failure("a")
    assert b.up("a") and b.pick(["a", "b"]) == ["a", "b"]
    b.failure("a")
    assert not b.up("a") and changes[-1] == ("a", False)
    assert b.pick(["a", "b"]) == ["b"]
    clock.t += 5.0
    assert b.pick(["a", "b"]) == ["a", "b"]  # half-open: one probe goes through…
    assert b.pick(["a", "b"]) == ["b"]  # …and only one
    b.failure("a")  # the probe failed: open for another full period
    clock.t += 4.9
    assert b.pick(["a", "b"]) == ["b"]
    clock.t += 0.1
    assert b.allow("a")
    b.success("a")
    assert b.up("a") and changes[-1] == ("a", True)
    for _ in range(3):
        b.failure("a")
        b.failure("b")
    assert b.pick(["a", "b"]) == ["a", "b"]  # every breaker open: try them all rather than refuse


def test_a_refused_connection_opens_the_breaker_at_once() -> None:
    """Nothing listens on the replica (its process is gone): no need to wait for more failures."""
    b = Breakers(["a", "b"], failures=3, open_s=5.0)
    b.failure("a")
    assert b.up("a")
    b.failure("b", refused=True)
    assert not b.up("b") and [u for u, _ in b.opened] == ["b"]


def test_routes_refresh_closes_a_reachable_replica_after_its_open_period() -> None:
    clock = Clock()
    b = Breakers(["a"], failures=2, open_s=5.0, clock=clock)
    b.probed("a", False)
    b.probed("a", False)
    assert not b.up("a")
    b.probed("a", True)
    assert not b.up("a")  # too early
    clock.t += 5
    b.probed("a", True)
    assert b.up("a")


@pytest.fixture
async def second() -> AsyncIterator[FakeUpstream]:
    upstream = FakeUpstream()
    await upstream.start()
    yield upstream
    await upstream.stop()


def _two(settings: Settings, a: FakeUpstream, b: FakeUpstream) -> Settings:
    settings.upstream_replicas = [a.url, b.url]
    settings.gateway.routes_refresh_s = 600  # the tests drive the breakers, not the refresh
    settings.failover.breaker_open_s = 0.3
    settings.gateway.read_timeout_s = 5
    return settings


async def _metric(client: aiohttp.ClientSession, url: str, upstream: FakeUpstream) -> str:
    text = await (await client.get(url + "/metrics")).text()
    (line,) = [ln for ln in text.splitlines()
               if ln.startswith(f'careloop_upstream_replica_up{{replica="127.0.0.1:{upstream.port}"}}')]
    return line.rsplit(" ", 1)[1]


@pytest.mark.asyncio(loop_scope="session")
async def test_dead_replica_retried_elsewhere_breaker_opens_and_closes_again(
        settings: Settings, fake: FakeUpstream, second: FakeUpstream) -> None:
    async with running_gateway(_two(settings, fake, second)) as (gw, url), aiohttp.ClientSession() as client:
        await fake.stop()  # connection refused from now on
        codes = [(await client.post(url + CHAT, json=BODY)).status for _ in range(12)]
        assert codes == [200] * 12 and len(second.requests) == 12
        assert not gw.upstreams.breakers.up(fake.url)
        assert await _metric(client, url, fake) == "0.0" and await _metric(client, url, second) == "1.0"
        ready = await client.get(url + "/readyz")
        assert ready.status == 200 and await ready.json() == {"ready": True}  # details: /admin/status
        await fake.start()  # back on the same port
        await asyncio.sleep(0.35)
        for _ in range(4):
            assert (await client.post(url + CHAT, json=BODY)).status == 200
        assert gw.upstreams.breakers.up(fake.url) and len(fake.requests) >= 1  # the half-open probe closed it
        assert await _metric(client, url, fake) == "1.0"
        await second.stop()
        await fake.stop()
        for _ in range(4):  # both dead: 503 with no internal address in the body
            resp = await client.post(url + CHAT, json=BODY)
            assert resp.status == 503
            assert "127.0.0.1" not in await resp.text()
        ready = await client.get(url + "/readyz")
        assert ready.status == 503


@pytest.mark.asyncio(loop_scope="session")
async def test_503_is_retried_on_another_replica_but_a_started_stream_never_is(
        settings: Settings, fake: FakeUpstream, second: FakeUpstream) -> None:
    fake.mode = "error503"
    async with running_gateway(_two(settings, fake, second)) as (gw, url), aiohttp.ClientSession() as client:
        codes = [(await client.post(url + CHAT, json=BODY)).status for _ in range(10)]
        assert codes == [200] * 10
        assert len(fake.requests) == 3 and not gw.upstreams.breakers.up(fake.url)  # opened after 3 × 503
        gw.upstreams.breakers.success(fake.url)
        fake.mode = second.mode = "cut_stream"
        before = len(fake.requests) + len(second.requests)
        resp = await client.post(url + CHAT, json={**BODY, "stream": True})
        body = await resp.read()
        assert resp.status == 200 and b'"error"' in body  # reported in the stream…
        assert len(fake.requests) + len(second.requests) == before + 1  # …and not retried after bytes went out
        second.mode = "error503"
        fake.mode = "error503"
        gw.upstreams.breakers.success(fake.url)
        resp = await client.post(url + CHAT, json=BODY)
        assert resp.status == 503  # every replica said 503: the last one's answer is passed through


def _stub(port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, str(ROOT / "bench" / "stub_upstream.py"), "--port", str(port),
                             "--chunks", "4"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


async def _wait_port(port: int) -> None:
    for _ in range(200):
        try:
            _r, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise TimeoutError(port)


@pytest.mark.asyncio(loop_scope="session")
async def test_killing_a_replica_process_under_load_loses_no_request(settings: Settings) -> None:
    ports = [free_port(), free_port()]
    stubs = [_stub(p) for p in ports]
    try:
        for p in ports:
            await _wait_port(p)
        settings.upstream_replicas = [f"http://127.0.0.1:{p}" for p in ports]
        settings.gateway.routes_refresh_s = 600
        async with running_gateway(settings) as (gw, url), aiohttp.ClientSession() as client:
            codes: list[int] = []
            stop = time.monotonic() + 3.0

            async def load() -> None:
                while time.monotonic() < stop:
                    async with client.post(url + CHAT, json=BODY) as resp:
                        await resp.read()
                        codes.append(resp.status)

            tasks = [asyncio.create_task(load()) for _ in range(16)]
            await asyncio.sleep(1.0)
            n_before = len(codes)
            os.killpg(stubs[0].pid, signal.SIGKILL)
            killed_at = time.monotonic()
            await asyncio.gather(*tasks)
        assert n_before > 50 and len(codes) > n_before + 50
        assert codes.count(200) == len(codes), {c: codes.count(c) for c in set(codes)}
        ((dead, opened_at),) = gw.upstreams.breakers.opened
        assert dead == settings.upstream_replicas[0] and opened_at - killed_at < 1.0
        print(f"{len(codes)} requests, all 200; breaker opened {(opened_at - killed_at) * 1e3:.1f} ms after the kill")
    finally:
        for s in stubs:
            if s.poll() is None:
                os.killpg(s.pid, signal.SIGKILL)
            s.wait(10)


@pytest.mark.asyncio(loop_scope="session")
async def test_a_dropped_connection_is_followed_by_a_probe_that_opens_a_dead_replica(
        settings: Settings, fake: FakeUpstream, second: FakeUpstream) -> None:
    """A replica that dies mid-request drops the connection (one failure, below the threshold); the gateway
    knocks on it at once and, finding nothing listening, opens its breaker without waiting for more failures."""
    fake.mode = "hang"
    async with running_gateway(_two(settings, fake, second)) as (gw, url), aiohttp.ClientSession() as client:
        breakers = gw.upstreams.breakers
        pending = [asyncio.create_task(client.post(url + CHAT, json=BODY)) for _ in range(2)]
        for _ in range(200):  # one of the two is held by the hanging replica
            if fake.requests:
                break
            await asyncio.sleep(0.01)
        await fake.stop()  # the replica's process goes: listener closed, the held request's connection dropped
        assert [(await r).status for r in pending] == [200, 200]  # the dropped one retried on the other
        for _ in range(100):
            if not breakers.up(fake.url):
                break
            await asyncio.sleep(0.01)
        assert not breakers.up(fake.url) and breakers.state[fake.url].failures >= breakers.threshold


@pytest.mark.asyncio(loop_scope="session")
async def test_a_probe_that_gets_no_answer_opens_the_breaker() -> None:
    """A killed server whose listening socket outlives its API server (a child that inherited it is still
    tearing down) queues connections without answering: the probe after a dropped connection times out, and
    that opens the breaker at once instead of waiting for the socket to close."""
    from careloop.gateway.upstreams import Upstreams

    listener = socket.create_server(("127.0.0.1", 0), backlog=8)  # listens, never accepts
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    ups = Upstreams([url, "http://127.0.0.1:9"], connect_timeout_s=1.0, read_timeout_s=5.0, pool_size=4)
    await ups.start()
    try:
        started = time.monotonic()
        ups.probe_soon(url)
        while ups.breakers.up(url) and time.monotonic() - started < 5:
            await asyncio.sleep(0.01)
        assert not ups.breakers.up(url)
        assert time.monotonic() - started < ups.health_timeout_s + 0.5
        assert ups.breakers.up("http://127.0.0.1:9")  # only the probed replica
    finally:
        await ups.close()
        listener.close()


async def test_replicas_are_probed_without_traffic_and_a_silent_one_is_left() -> None:
    """With two or more replicas the gateway asks each one's /health every interval: one that stops answering
    has its breaker opened although no request has gone to it; live ones, probed all along, stay closed."""
    from careloop.gateway.upstreams import Upstreams

    live = FakeUpstream()
    await live.start()
    listener = socket.create_server(("127.0.0.1", 0), backlog=8)  # will listen and never accept
    silent = f"http://127.0.0.1:{listener.getsockname()[1]}"
    ups = Upstreams([live.url, silent], connect_timeout_s=1.0, read_timeout_s=5.0, pool_size=4,
                    health_interval_s=0.1, health_timeout_s=0.3)
    await ups.start()
    try:
        started = time.monotonic()
        while ups.breakers.up(silent) and time.monotonic() - started < 5:
            await asyncio.sleep(0.01)
        assert not ups.breakers.up(silent) and time.monotonic() - started < 0.1 + 0.3 + 0.3
        await asyncio.sleep(1.0)  # ten more rounds of probes
        assert ups.breakers.up(live.url) and [u for u, _ in ups.breakers.opened] == [silent]
    finally:
        await ups.close()
        await live.stop()
        listener.close()


async def test_a_replica_whose_health_fails_is_left_after_the_breakers_count() -> None:
    """vLLM answers /health with a 5xx when its engine has died: each probe counts as one failure."""
    from careloop.gateway.upstreams import Upstreams

    async def unwell(request: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.Response(status=503, text="engine dead")

    sick, well = FakeUpstream(), FakeUpstream()
    sick._health = unwell  # type: ignore[method-assign]
    for fake in (sick, well):
        await fake.start()
    ups = Upstreams([sick.url, well.url], connect_timeout_s=1.0, read_timeout_s=5.0, pool_size=4,
                    breakers=Breakers([sick.url, well.url], failures=3), health_interval_s=0.1)
    await ups.start()
    try:
        await asyncio.sleep(0.15)
        assert ups.breakers.up(sick.url)  # one or two failed probes: not yet
        await asyncio.sleep(0.6)
        assert not ups.breakers.up(sick.url) and ups.breakers.up(well.url)
    finally:
        await ups.close()
        for fake in (sick, well):
            await fake.stop()


async def test_one_replica_is_not_probed() -> None:
    """With a single replica there is nowhere else to send requests: no periodic probes."""
    from careloop.gateway.upstreams import Upstreams

    ups = Upstreams(["http://127.0.0.1:9"], connect_timeout_s=1.0, read_timeout_s=5.0, pool_size=4,
                    health_interval_s=0.1)
    await ups.start()
    try:
        await asyncio.sleep(0.3)
        assert ups.breakers.up("http://127.0.0.1:9") and not ups._probing
    finally:
        await ups.close()
