"""The monitor's HTTP server: /metrics (Prometheus text), /healthz, and the review routes when present."""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from careloop.core.settings import Settings

if TYPE_CHECKING:
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
