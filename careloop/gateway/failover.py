"""Per-replica circuit breakers: which vLLM replicas a request may try, and in what state each one is.

Closed: the replica takes requests. After `failures` consecutive failures (the connection failed before any
response, or the replica answered 503) it opens: no requests for `open_s`. Then it is half-open: one request
is let through as a probe (or the routes refresh reaches the replica); success closes the breaker, failure
opens it again. When every breaker is open, requests try every replica anyway (failing fast on a refused
connection costs less than refusing every client).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class Breaker:
    """One replica's breaker state."""

    failures: int = 0
    opened_at: float | None = None  # monotonic time the breaker opened; None while closed
    probe_at: float | None = None  # when the half-open probe was let through

    @property
    def closed(self) -> bool:
        """Whether the replica takes requests normally."""
        return self.opened_at is None


class Breakers:
    """The breakers of every replica; `on_change(url, up)` is told whenever one opens or closes."""

    def __init__(self, urls: list[str], failures: int = 3, open_s: float = 5.0,
                 on_change: Callable[[str, bool], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = failures
        self.open_s = open_s
        self.on_change = on_change
        self.clock = clock
        self.state = {url: Breaker() for url in urls}
        self.opened: list[tuple[str, float]] = []  # (url, monotonic time) of each opening, for tests and status
        for url in urls:
            self._notify(url, True)

    def _notify(self, url: str, up: bool) -> None:
        if self.on_change is not None:
            self.on_change(url, up)

    def allow(self, url: str) -> bool:
        """Whether a request may go to this replica now (lets one probe through a half-open breaker)."""
        b = self.state[url]
        if b.opened_at is None:
            return True
        now = self.clock()
        if now - b.opened_at < self.open_s:
            return False
        if b.probe_at is not None and now - b.probe_at < self.open_s:
            return False  # a probe is already out
        b.probe_at = now
        return True

    def pick(self, order: list[str]) -> list[str]:
        """The replicas of `order` a request may try (all of them when every breaker is open)."""
        allowed = [u for u in order if self.allow(u)]
        return allowed or order

    def success(self, url: str) -> None:
        """The replica answered: close its breaker."""
        b = self.state[url]
        b.failures = 0
        if b.opened_at is not None:
            b.opened_at = b.probe_at = None
            self._notify(url, True)

    def failure(self, url: str, refused: bool = False) -> None:
        """The replica failed a request (no response, or 503): count it, open the breaker at the threshold.

        A refused connection (nothing listens there: the process is gone) opens it at once.
        """
        b = self.state[url]
        b.failures = max(b.failures + 1, self.threshold if refused else 0)
        now = self.clock()
        if b.opened_at is not None:
            if b.probe_at is not None:  # the half-open probe failed: open again for a full period
                b.opened_at, b.probe_at = now, None
            return
        if b.failures >= self.threshold:
            b.opened_at, b.probe_at = now, None
            self.opened.append((url, now))
            self._notify(url, False)

    def probed(self, url: str, reachable: bool) -> None:
        """The routes refresh reached (or not) this replica: a reachable one past its open period closes."""
        b = self.state[url]
        if reachable:
            if b.opened_at is not None and self.clock() - b.opened_at >= self.open_s:
                self.success(url)
        else:
            self.failure(url)

    def up(self, url: str) -> bool:
        """Whether the replica's breaker is closed."""
        return self.state[url].closed
