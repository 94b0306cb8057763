"""The monitor's process: its scheduled jobs, and its HTTP server (/metrics, /healthz, the review routes when
present)."""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from careloop.core import telemetry
from careloop.core.settings import Settings
from careloop.monitor.loop import MonitorService

log = logging.getLogger("careloop.monitor.server")


def review_routes(settings: Settings, engine: Any) -> list[BaseRoute]:
    """The human-review routes of `monitor.review` when that module exists (else none)."""
    try:
        module = importlib.import_module("careloop.monitor.review")
    except ModuleNotFoundError as exc:
        if exc.name != "careloop.monitor.review":
            raise
        return []
    factory = getattr(module, "review_routes", None)
    if factory is None:
        return []
    routes = factory(settings, engine)
    if isinstance(routes, list | tuple):
        return list(routes)
    return [Mount("/review", app=routes)]


def create_app(settings: Settings, service: MonitorService) -> Starlette:
    """The Starlette app serving one monitor service."""
    try:  # the judges' error counter lives in the default registry: export it even before any LLM judge runs
        importlib.import_module("careloop.monitor.judges.llm")
    except ImportError:
        log.warning("monitor.judges.llm unavailable: careloop_judge_errors_total is not exported")

    async def metrics(_: Request) -> Response:
        body = service.metrics.exposition()
        if service.metrics.registry is not REGISTRY:
            body += generate_latest(REGISTRY)  # process metrics and the judges' own counters
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    async def healthz(_: Request) -> Response:
        ok, body = service.healthy()
        return JSONResponse(body, status_code=200 if ok else 503)

    routes: list[BaseRoute] = [Route("/metrics", metrics), Route("/healthz", healthz)]
    try:
        routes += review_routes(settings, service.engine)
    except Exception:  # the review UI must never keep the metrics endpoint down
        log.exception("review routes could not be mounted")
    return Starlette(routes=routes)


async def serve(settings: Settings, service: MonitorService | None = None,
                on_ready: Callable[[MonitorService], None] | None = None,
                status_every_s: float | None = None, status: Callable[[MonitorService], None] | None = None) -> None:
    """Run the monitor until cancelled or signalled: scheduler jobs plus the HTTP server."""
    import uvicorn
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    if settings.telemetry.otlp_endpoint:
        telemetry.configure(settings.telemetry.otlp_endpoint, "careloop-monitor")
    if service is None:
        from careloop.core.migrations import upgrade

        upgrade(settings.database_url or "")
        service = await asyncio.to_thread(MonitorService.create, settings)
    await asyncio.to_thread(service.start)
    m = settings.monitor
    scheduler = AsyncIOScheduler()
    opts: dict[str, Any] = {"max_instances": 1, "coalesce": True, "misfire_grace_time": None}

    async def in_thread(fn: Callable[[], Any]) -> None:
        await asyncio.to_thread(fn)

    scheduler.add_job(service.judge_job, "interval", seconds=m.judge_interval_s, id="judge", **opts)
    scheduler.add_job(in_thread, "interval", args=[service.refresh_job], seconds=m.metrics_interval_s,
                      id="windows", **opts)
    scheduler.add_job(in_thread, "interval", args=[service.trigger_job], seconds=m.trigger_interval_s,
                      id="triggers", **opts)
    scheduler.add_job(in_thread, "interval", args=[service.launcher_job], seconds=m.launcher_interval_s,
                      id="launcher", **opts)
    if settings.retention.enabled:  # issue 23: batched purge, off the event loop
        scheduler.add_job(in_thread, "interval", args=[service.retention_job], seconds=settings.retention.interval_s,
                          id="retention", **opts)
    if status is not None and status_every_s:
        scheduler.add_job(status, "interval", args=[service], seconds=status_every_s, id="status", **opts)
    app = create_app(settings, service)
    config = uvicorn.Config(app, host=m.host, port=m.port, log_level="warning", access_log=False,
                            lifespan="off")
    server = uvicorn.Server(config)
    service.http_server = server
    scheduler.start()
    if on_ready is not None:
        on_ready(service)
    try:
        await server.serve()
    finally:
        scheduler.shutdown(wait=False)
        await service.aclose()
        if settings.telemetry.otlp_endpoint:
            telemetry.shutdown()
