"""Per-key request and token limits that hold across any number of gateway replicas sharing one store.

Windows are fixed (`keys.window_s`, aligned to the epoch); a key's `rpm`/`tpm` are scaled to the window. The
store holds, per key and window, how much quota the replicas have *claimed* (`rate_window`). A gateway
claims quota in small slices (`keys.claim_fraction` of the window's quota, at least 1) in one short
transaction (row lock on PostgreSQL, the write lock on SQLite), never more than what is left, and spends it
from memory: the request path touches the store only when its slice runs out, and a background claim refills
the slice before it does. The sum of all claims can never pass the limit, so the only error is quota claimed
and not used when the window ends — at most one slice per replica (with N replicas, N x claim_fraction of
the limit; nothing at all when every replica keeps receiving traffic, since each then spends what it holds).

Tokens are known after the response: a request is admitted while the key's token slice is positive, its
prompt + completion tokens are then spent (the slice may go negative, and the next claim covers the debt),
so requests already in flight when a key reaches its tpm may pass it by their own tokens, as with OpenAI.

With the store down, a gateway grants itself the slice it asked for (fails open, logged): serving clinicians
matters more than the quota for the few seconds a store restart takes.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.engine import Engine

from careloop.core.store import is_sqlite
from careloop.gateway.errors import GatewayError
from careloop.gateway.keys import KeyInfo, KeyRing

log = logging.getLogger("careloop.ratelimit")
_TOTAL_TOKENS = re.compile(rb'"total_tokens"\s*:\s*(\d+)')


def claim(engine: Engine, key_name: str, window: int, want_requests: int, max_requests: int | None,
          want_tokens: int, max_tokens: int | None) -> tuple[int, int]:
    """Claim up to the wanted quota for a key's window from the store; returns what was granted."""
    sqlite = is_sqlite(str(engine.url))
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO rate_window (key_name, window_start, requests, tokens) "
                          "VALUES (:k, :w, 0, 0) ON CONFLICT DO NOTHING"), {"k": key_name, "w": window})
        row = conn.execute(text("SELECT requests, tokens FROM rate_window WHERE key_name = :k AND window_start = :w"
                                + ("" if sqlite else " FOR UPDATE")), {"k": key_name, "w": window}).one()
        got_r = want_requests if max_requests is None else max(0, min(want_requests, max_requests - row[0]))
        got_t = want_tokens if max_tokens is None else max(0, min(want_tokens, max_tokens - row[1]))
        if got_r or got_t:
            conn.execute(text("UPDATE rate_window SET requests = requests + :r, tokens = tokens + :t "
                              "WHERE key_name = :k AND window_start = :w"),
                         {"r": got_r, "t": got_t, "k": key_name, "w": window})
    return got_r, got_t


def usage_tokens(response: bytes | list[bytes] | None) -> int | None:
    """Total tokens from a chat completion's usage (the body's tail, or a stream's last chunks)."""
    if response is None:
        return None
    tails = [response[-400:]] if isinstance(response, bytes) else [c[-400:] for c in response[-3:]]
    for tail in reversed(tails):
        found = _TOTAL_TOKENS.findall(tail)
        if found:
            return int(found[-1])
    return None


@dataclass(slots=True)
class Allowance:
    """One key's quota held by this gateway in the current window."""

    window: int
    requests: int = 0
    tokens: int = 0
    requests_out: bool = False  # the store has no more requests for this window
    tokens_out: bool = False
    claiming: asyncio.Future[None] | None = None


class RateLimited(GatewayError):
    """429 with OpenAI's body (type `requests` or `tokens`) and the seconds until the window ends."""

    def __init__(self, kind: str, name: str, limit: int, window_s: int, retry_after: float) -> None:
        self.retry_after = max(1, math.ceil(retry_after))
        self.key_name = name
        super().__init__(429, f"Rate limit reached for client key '{name}' on {kind}: limit {limit} per "
                              f"{window_s} s. Retry after {self.retry_after} s.", kind, "rate_limit_exceeded")

    def headers(self) -> list[tuple[bytes, bytes]]:
        """`Retry-After` in whole seconds."""
        return [(b"retry-after", str(self.retry_after).encode())]


class RateLimiter:
    """This gateway's slices of every limited key's quota."""

    def __init__(self, engine: Engine, window_s: int = 60, claim_fraction: float = 0.02,
                 clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.window_s = window_s
        self.fraction = claim_fraction
        self.clock = clock
        self.held: dict[str, Allowance] = {}
        self.claims = 0  # store round trips, for tests and status

    def _limits(self, key: KeyInfo) -> tuple[int | None, int | None]:
        scale = self.window_s / 60.0
        rpm = max(1, int(key.rpm * scale)) if key.rpm else None
        tpm = max(1, int(key.tpm * scale)) if key.tpm else None
        return rpm, tpm

    async def admit(self, key: KeyInfo) -> None:
        """Spend one request of the key's quota; raises 429 (with `retry_after`) when there is none left."""
        now = self.clock()
        window = int(now // self.window_s) * self.window_s
        a = self.held.get(key.name)
        if a is None or a.window != window:
            a = self.held[key.name] = Allowance(window)
        max_r, max_t = self._limits(key)
        if (max_r is not None and a.requests <= 0) or (max_t is not None and a.tokens <= 0):
            await self._claim(key, a, max_r, max_t)
        retry = window + self.window_s - now
        if max_r is not None and a.requests <= 0:
            raise RateLimited("requests", key.name, max_r, self.window_s, retry)
        if max_t is not None and a.tokens <= 0:
            raise RateLimited("tokens", key.name, max_t, self.window_s, retry)
        if max_r is not None:
            a.requests -= 1
            if a.requests * 2 < self._slice(max_r) and not a.requests_out and a.claiming is None:
                a.claiming = asyncio.ensure_future(self._claim_now(key, a, max_r, max_t))

    def spend_tokens(self, key: KeyInfo, tokens: int) -> None:
        """Charge a finished request's tokens to the key (the next claim covers any debt)."""
        a = self.held.get(key.name)
        if a is not None and key.tpm:
            a.tokens -= tokens

    def _slice(self, limit: int) -> int:
        return max(1, int(limit * self.fraction))

    async def _claim(self, key: KeyInfo, a: Allowance, max_r: int | None, max_t: int | None) -> None:
        """Refill from the store, sharing one claim between every request that waits for it."""
        if a.claiming is None:
            a.claiming = asyncio.ensure_future(self._claim_now(key, a, max_r, max_t))
        await asyncio.shield(a.claiming)

    async def _claim_now(self, key: KeyInfo, a: Allowance, max_r: int | None, max_t: int | None) -> None:
        want_r = want_t = 0
        if max_r is not None and not a.requests_out and a.requests * 2 < self._slice(max_r):
            want_r = self._slice(max_r) - min(a.requests, 0)
        if max_t is not None and not a.tokens_out and a.tokens <= self._slice(max_t) // 2:
            want_t = self._slice(max_t) - min(a.tokens, 0)
        try:
            if want_r or want_t:
                self.claims += 1
                try:
                    got_r, got_t = await asyncio.to_thread(claim, self.engine, key.name, a.window, want_r, max_r,
                                                           want_t, max_t)
                except Exception as exc:  # store down: fail open with the slice asked for
                    log.warning("rate-limit claim for %s failed (%s); granting locally", key.name, exc)
                    got_r, got_t = want_r, want_t
                a.requests += got_r
                a.tokens += got_t
                a.requests_out = a.requests_out or (want_r > 0 and got_r < want_r)
                a.tokens_out = a.tokens_out or (want_t > 0 and got_t < want_t)
        finally:
            a.claiming = None


async def check_access(keys: KeyRing, limiter: RateLimiter, authorization: bytes | None) -> KeyInfo | None:
    """The request's client key, authenticated and charged one request; raises 401 or 429."""
    key = await keys.authenticate(authorization)
    if key is not None and (key.rpm or key.tpm):
        await limiter.admit(key)
    return key


def charge_tokens(limiter: RateLimiter, key: KeyInfo | None, response: bytes | list[bytes] | None) -> None:
    """After a response: spend its tokens from the key's quota (only keys with a tpm; reads the usage tail)."""
    if key is not None and key.tpm:
        tokens = usage_tokens(response)
        if tokens:
            limiter.spend_tokens(key, tokens)
