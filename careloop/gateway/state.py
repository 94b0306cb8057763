"""What the request handlers (`proxy`, `admin`, `keys_admin`) use of the gateway process.

`careloop.gateway.app.Gateway` is the one implementation; the handlers depend on this description of it, so
imports run one way: `app` → handlers → `state`.
"""

from __future__ import annotations

from typing import Any, Protocol

from sqlalchemy.engine import Engine

from careloop.core.settings import Settings
from careloop.gateway.keys import KeyRing
from careloop.gateway.metrics import GatewayMetrics
from careloop.gateway.ratelimit import RateLimiter
from careloop.gateway.routing import Routes
from careloop.gateway.sampling import Sampler
from careloop.gateway.traffic_log import TrafficLog
from careloop.gateway.upstreams import Upstreams


class GatewayState(Protocol):
    """One gateway process as its handlers see it: settings, store, clients, routes, log and metrics."""

    settings: Settings
    engine: Engine
    metrics: GatewayMetrics
    upstreams: Upstreams
    keys: KeyRing
    limiter: RateLimiter
    sampler: Sampler
    traffic_log: TrafficLog
    routes: Routes
    user_key_secret: bytes
    tracing: bool

    async def refresh_routes(self) -> Routes:
        """Reconcile vLLM with the registry now and switch to the resulting routes."""
        ...

    async def probe_upstreams(self) -> dict[str, bool]:
        """Whether each vLLM replica answers its health check now."""
        ...

    def status(self) -> dict[str, Any]:
        """What `/admin/status` reports about this process."""
        ...
