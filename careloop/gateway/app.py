"""The gateway as a raw ASGI app: chat completions, models, health, metrics, admin.

Raw ASGI rather than a framework keeps the per-request cost to one dict lookup for routing; the handlers are
plain coroutines. State lives on one `Gateway` object created per process (and per test).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from sqlalchemy.engine import Engine

from careloop.core import telemetry
from careloop.core.private_files import load_or_create_secret, private_dir
from careloop.core.settings import Settings, check_admin_token
from careloop.core.store import init_db, make_engine
from careloop.gateway import admin
from careloop.gateway.asgi import CLIENT_GONE, Receive, Scope, Send, send_bytes
from careloop.gateway.errors import GatewayError, not_found, send_error
from careloop.gateway.failover import Breakers
from careloop.gateway.keys import KeyRing, keys_required, startup_message
from careloop.gateway.metrics import GatewayMetrics
from careloop.gateway.proxy import chat_completions
from careloop.gateway.ratelimit import RateLimiter
from careloop.gateway.routing import Routes
from careloop.gateway.sampling import Sampler
from careloop.gateway.traffic_log import TrafficLog
from careloop.gateway.upstreams import Upstreams
from careloop.gateway.vllm_admin import RegistryView, read_registry, reconcile

log = logging.getLogger("careloop.gateway")

# vLLM routes that must never be reachable through the gateway.
BLOCKED = frozenset({"/v1/load_lora_adapter", "/v1/unload_lora_adapter"})


class Gateway:
    """One gateway process: settings, store, upstream client, routes, traffic log and metrics."""

    def __init__(self, settings: Settings, engine: Engine | None = None, freeze_gc: bool = False) -> None:
        settings.admin_token = check_admin_token(settings.admin_token)  # also when set after validation
        self.settings = settings
        self.freeze_gc = freeze_gc  # the server process sets it; tests that embed the app do not
        self.engine = engine or make_engine(settings.database_url or "", json_serializer=_json_text)
        self.metrics = GatewayMetrics()
        g = settings.gateway
        f = settings.failover
        breakers = Breakers(settings.upstreams, f.breaker_failures, f.breaker_open_s, self.metrics.set_replica_up)
        self.upstreams = Upstreams(settings.upstreams, g.connect_timeout_s, g.read_timeout_s, g.pool_size,
                                   settings.upstream_api_key, breakers, f.health_interval_s, f.health_timeout_s)
        k = settings.keys
        self.keys = KeyRing(self.engine, k.refresh_s, keys_required(settings), settings.spool_dir / "client-keys.json")
        self.limiter = RateLimiter(self.engine, k.window_s, k.claim_fraction)
        self.sampler = Sampler(settings.sample_rate, settings.canary_sample_rate)
        secrets_dir = settings.secrets_dir
        self.user_key_secret = load_or_create_secret(settings.user_key_secret_file or secrets_dir / "user-key")
        wal_key = load_or_create_secret(settings.wal_key_file or secrets_dir / "wal.key") if g.durable_log else None
        self.traffic_log = TrafficLog(self.engine, settings.spool_dir, self.metrics, g.log_queue_size,
                                      g.log_batch_size, g.log_flush_interval_s, wal_dir=settings.wal_dir,
                                      wal_key=wal_key, quarantine_dir=settings.quarantine_dir,
                                      row_processes=g.row_processes)
        self.routes = Routes(stable=settings.base_model)
        self.last_reconcile: float = 0.0
        self.last_reconcile_error: str | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._reconcile_lock = asyncio.Lock()
        self._last_view: RegistryView | None = None
        self.started_at = time.time()
        self.tracing = False  # OpenTelemetry spans (set at startup when an OTLP endpoint is configured)
        self._dispatch = {
            ("POST", "/v1/chat/completions"): chat_completions,
            ("GET", "/v1/models"): Gateway._models,
            ("GET", "/healthz"): Gateway._healthz,
            ("GET", "/readyz"): Gateway._readyz,
            ("GET", "/metrics"): Gateway._metrics,
        }

    # ASGI.
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            path = scope["path"]
            handler = self._dispatch.get((scope["method"], path))
            try:
                if handler is not None:
                    await handler(self, scope, receive, send)
                elif path.startswith("/admin/") or path == "/admin":
                    await admin.handle(self, scope, receive, send)
                else:
                    await self._unknown(scope, send)
            except GatewayError as exc:
                await send_error(send, exc)
            except asyncio.CancelledError:
                if not scope.get(CLIENT_GONE):
                    raise
                # The client left before its response ended: nothing to answer.
            except Exception as exc:
                log.error("unhandled %s on %s %s", type(exc).__name__, scope["method"], path)
                with contextlib.suppress(Exception):
                    await send_error(send, GatewayError(500, "internal gateway error", "server_error",
                                                        "internal_error"))
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _unknown(self, scope: Scope, send: Send) -> None:
        path = scope["path"]
        if path in BLOCKED:
            raise not_found("adapter management is not available through the gateway", "not_found")
        known_paths = {p for _, p in self._dispatch}
        if path in known_paths:
            raise GatewayError(405, f"method {scope['method']} not allowed on {path}", "invalid_request_error",
                               "method_not_allowed")
        raise not_found(f"no route {scope['method']} {path}")

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.exception("gateway startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # Lifecycle.
    async def startup(self) -> None:
        """Open the store and the upstream client, start the log writer and the routes refresher."""
        private_dir(self.settings.spool_dir)
        try:
            await asyncio.to_thread(init_db, self.engine)
        except Exception as exc:  # the store may be down: serve anyway, spool until it is back
            log.error("store unreachable at startup (%s); exchanges will be spooled", exc)
        await self.upstreams.start()
        if self.settings.telemetry.otlp_endpoint:
            telemetry.configure(self.settings.telemetry.otlp_endpoint, "careloop-gateway")
        self.tracing = telemetry.enabled()
        level, message = startup_message(self.settings)
        log.log(level, "%s", message)
        await self.keys.reload()
        self.keys.start()
        self.traffic_log.start()
        with contextlib.suppress(Exception):
            await self.refresh_routes()
        self._refresher = asyncio.get_running_loop().create_task(self._refresh_loop(), name="routes-refresh")
        if self.freeze_gc:
            # Everything allocated so far lives for the whole process: keep it out of full collections.
            gc.collect()
            gc.freeze()

    async def shutdown(self) -> None:
        """Stop refreshing, drain the traffic log, close the client."""
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        await self.keys.stop()
        await self.traffic_log.drain()
        await self.upstreams.close()
        if self.settings.telemetry.otlp_endpoint:
            telemetry.shutdown()  # flush the last spans
        written, spooled = self.traffic_log.writer.written, self.traffic_log.writer.spooled
        log.info("gateway stopped: %d exchanges written, %d spooled, %d dropped", written, spooled,
                 self.traffic_log.dropped)

    async def refresh_routes(self) -> Routes:
        """Reconcile vLLM with the registry now and switch to the resulting routes."""
        session = self.upstreams.session
        assert session is not None
        async with self._reconcile_lock:
            try:
                view = await self._registry_view()
                routes = await reconcile(session, view, self.upstreams.urls, self.settings.base_model,
                                         previous=self.routes if self.routes.known else None,
                                         api_key=self.settings.upstream_api_key,
                                         default_canary_fraction=self.settings.gateway.canary_fraction)
            except Exception as exc:
                self.last_reconcile_error = str(exc)
                raise
            self.upstreams.healthy = list(routes.replicas)
            for url in self.upstreams.urls:
                self.upstreams.breakers.probed(url, url in routes.replicas)
            if routes != self.routes:
                log.info("routes: stable=%s canary=%s (%.0f%%)", routes.stable, routes.canary,
                         routes.canary_fraction * 100)
            self.routes = routes
            self.last_reconcile = time.monotonic()
            self.last_reconcile_error = None
            self.metrics.set_routes(routes.targets(), routes.canary_fraction if routes.canary else 0.0)
            return routes

    @property
    def _view_cache(self) -> Path:
        return self.settings.spool_dir / "registry-view.json"

    async def _registry_view(self) -> RegistryView:
        """The registry's view; while the store is down, the last one read (kept on disk across restarts)."""
        try:
            view = await asyncio.to_thread(read_registry, self.engine)
        except Exception as exc:
            if self._last_view is None and self._view_cache.exists():
                self._last_view = RegistryView.from_json(self._view_cache.read_bytes())
            if self._last_view is None:
                raise
            log.warning("store unreachable (%s); routing by the registry as last read", exc)
            return self._last_view
        if view != self._last_view:
            self._last_view = view
            with contextlib.suppress(OSError):
                tmp = self._view_cache.with_suffix(".tmp")
                tmp.write_bytes(view.to_json())
                tmp.replace(self._view_cache)
        return view

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.gateway.routes_refresh_s)
            try:
                await self.refresh_routes()
            except Exception as exc:
                log.warning("routes refresh failed: %s", exc)

    # Small routes.
    async def _models(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.keys.authenticate(dict(scope["headers"]).get(b"authorization"))
        body = {"object": "list", "data": [{"id": self.settings.public_model, "object": "model",
                                             "created": int(self.started_at), "owned_by": "careloop"}]}
        await send_bytes(send, 200, orjson.dumps(body))

    async def _healthz(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_bytes(send, 200, b'{"status":"ok"}')

    async def _readyz(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Ready when routes are known and at least one replica answers its health check now."""
        reachable = await self.probe_upstreams()
        breakers = self.upstreams.breakers
        ok = self.routes.known and any(up and breakers.up(url) for url, up in reachable.items())
        # Unauthenticated: ready or not and nothing else (upstreams, breakers, adapters, store: `/admin/status`).
        await send_bytes(send, 200 if ok else 503, b'{"ready":true}' if ok else b'{"ready":false}')

    async def probe_upstreams(self) -> dict[str, bool]:
        """Whether each vLLM replica answers `/health` within 2 s."""
        session = self.upstreams.session
        out: dict[str, bool] = {}
        for url in self.upstreams.urls:
            try:
                assert session is not None
                async with session.get(url + "/health", timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    out[url] = resp.status == 200
            except Exception:
                out[url] = False
        return out

    async def _metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_bytes(send, 200, self.metrics.render(), b"text/plain; version=0.0.4; charset=utf-8")

    def status(self) -> dict[str, Any]:
        """What `/admin/status` reports about this process."""
        r = self.routes
        return {
            "public_model": self.settings.public_model,
            "routes": {"stable": r.stable, "stable_adapter": r.stable_adapter, "canary": r.canary,
                       "canary_fraction": r.canary_fraction if r.canary else 0.0, "known": r.known,
                       "loaded": r.loaded},
            "upstreams": self.upstreams.urls,
            "healthy_upstreams": self.upstreams.healthy,
            "last_reconcile_age_s": round(time.monotonic() - self.last_reconcile, 3)
            if self.last_reconcile else None,
            "last_reconcile_error": self.last_reconcile_error,
            "sample_rate": self.settings.sample_rate,
            "canary_sample_rate": self.settings.canary_sample_rate,
            "traffic_log": self.traffic_log.status(),
            "uptime_s": round(time.time() - self.started_at, 1),
        }


def _json_text(value: Any) -> str:
    """orjson for the store's JSON columns (several times faster than json.dumps in the writer thread)."""
    return orjson.dumps(value).decode()


def create_app(settings: Settings, engine: Engine | None = None, freeze_gc: bool = False) -> Gateway:
    """The gateway ASGI app for these settings."""
    return Gateway(settings, engine, freeze_gc)
