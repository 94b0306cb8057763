"""The vLLM replicas behind the gateway: round robin, failover before a reply, health probes.

Requests go through the hot path's own client (`careloop/gateway/upstream_client.py`); `/health` probes, route
reconciliation and admin calls through an aiohttp session.
"""

from __future__ import annotations

import asyncio
import itertools
import time

import aiohttp

from careloop.gateway.errors import upstream_error
from careloop.gateway.failover import Breakers
from careloop.gateway.upstream_client import ConnectFailed, Disconnected, UpstreamClient, UpstreamResponse

CHAT_PATH = b"/v1/chat/completions"


class Upstreams:
    """The vLLM replicas, the clients that reach them, and the order requests try them in."""

    def __init__(self, urls: list[str], connect_timeout_s: float, read_timeout_s: float, pool_size: int,
                 api_key: str | None = None, breakers: Breakers | None = None, health_interval_s: float = 0.0,
                 health_timeout_s: float = 0.5) -> None:
        self.urls = [u.rstrip("/") for u in urls]
        self.breakers = breakers or Breakers(self.urls)
        self.healthy = list(self.urls)
        self._rr = itertools.count()
        self.timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_s,
                                             sock_read=read_timeout_s)
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.header_lines = b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in self.headers.items())
        self.pool_size = pool_size
        self.client = UpstreamClient(self.urls, connect_timeout_s, read_timeout_s, pool_size)
        self.session: aiohttp.ClientSession | None = None
        # Health probes have a client of their own: a pool full of requests must not make them wait.
        self.probe_session: aiohttp.ClientSession | None = None
        self.health_interval_s = health_interval_s if len(self.urls) > 1 else 0.0  # one replica: nowhere to go
        self.health_timeout_s = health_timeout_s
        self._probing: dict[str, asyncio.Task[None]] = {}
        self._watcher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Open the aiohttp session (probes, reconciliation, admin) and start the health watcher."""
        connector = aiohttp.TCPConnector(limit=self.pool_size, limit_per_host=0, ttl_dns_cache=300,
                                         keepalive_timeout=60)
        self.session = aiohttp.ClientSession(connector=connector, timeout=self.timeout, auto_decompress=False,
                                             skip_auto_headers=("User-Agent", "Accept-Encoding"))
        self.probe_session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.health_timeout_s),
                                                   headers=self.headers)
        if self.health_interval_s > 0:
            self._watcher = asyncio.get_running_loop().create_task(self._watch(), name="replica-health")

    async def close(self) -> None:
        """Close the client and its connections."""
        for task in [self._watcher, *self._probing.values()]:
            if task is not None:
                task.cancel()
        for session in (self.session, self.probe_session):
            if session is not None:
                await session.close()
        self.client.close()

    def order(self) -> list[str]:
        """Replicas to try for one request, round robin over the serving ones (all, if none is known yet).

        Only serving replicas are tried: they are the ones known to hold the adapters requests route to.
        """
        pool = self.healthy or self.urls
        if len(pool) == 1:
            return pool
        i = next(self._rr) % len(pool)
        return self.breakers.pick(pool[i:] + pool[:i])

    async def _watch(self) -> None:
        """Probe every replica whose breaker is closed, each `health_interval_s`, until cancelled."""
        while True:
            for url in self.urls:
                if self.breakers.up(url):
                    self.probe_soon(url)
            await asyncio.sleep(self.health_interval_s)

    def probe_soon(self, url: str) -> None:
        """Knock on the replica's `/health` now (one probe at a time); no answer in time opens its breaker.

        Called every `health_interval_s` with two or more replicas, and at once after a dropped connection. A live
        vLLM answers `/health` from its API server's event loop within milliseconds even while it generates; one
        that refuses, or cannot answer within `health_timeout_s`, is gone or dying (a killed server's listening
        socket can outlive its API server while a child process that inherited it tears down its memory:
        connections then queue unanswered instead of being refused).
        """
        if url not in self._probing and self.probe_session is not None:
            task = asyncio.get_running_loop().create_task(self._probe(url))
            self._probing[url] = task
            task.add_done_callback(lambda _: self._probing.pop(url, None))

    async def _probe(self, url: str) -> None:
        assert self.probe_session is not None
        try:
            async with self.probe_session.get(url + "/health") as resp:
                await resp.read()
        except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError, TimeoutError):
            self.breakers.failure(url, refused=True)  # refused, dropped again, or no answer: gone
            return
        except aiohttp.ClientError:
            return  # answered something odd: alive, the failure count decides
        if resp.status >= 500:
            self.breakers.failure(url)  # alive but unwell (vLLM's engine died): counts like a 503

    async def post(self, payload: bytes, headers: bytes) -> tuple[UpstreamResponse, float]:
        """POST to the first replica that answers, and the time spent waiting; failover happens only here.

        `headers` are extra request header lines (`Name: value\\r\\n`) after the gateway's own. Nothing has gone
        to the client yet, so a replica that cannot be reached, whose connection closes before a response, or that
        answers 503 is retried on the next one; its breaker counts the failure. A read timeout or a malformed
        answer is not retried (the replica may be busy generating; 504 / 502). The last replica's 503 is passed
        through.
        """
        client = self.client
        breakers = self.breakers
        order = self.order()
        lines = self.header_lines + headers
        last_exc: BaseException | None = None
        wait = 0.0
        for i, url in enumerate(order):
            t_up = time.perf_counter()
            try:
                resp = await client.post(url, CHAT_PATH, lines, payload)
            except (ConnectFailed, Disconnected) as exc:  # no response from this replica: try the next one
                wait += time.perf_counter() - t_up
                refused = isinstance(exc, ConnectFailed) and exc.refused
                breakers.failure(url, refused=refused)
                if not refused:
                    self.probe_soon(url)
                last_exc = exc
                continue
            wait += time.perf_counter() - t_up
            if resp.status == 503 and i + 1 < len(order):
                breakers.failure(url)
                resp.close()
                continue
            if resp.status == 503:
                breakers.failure(url)
            else:
                breakers.success(url)
            return resp, wait
        raise upstream_error(503, f"vLLM is unreachable: {type(last_exc).__name__}", "upstream_unavailable")
