"""Run the real gateway (uvicorn, in this event loop) against a fake upstream, for tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn

from careloop.core.settings import Settings
from careloop.gateway.app import Gateway
from careloop.gateway.server import uvicorn_config
from tests.conftest import free_port


@asynccontextmanager
async def running_gateway(settings: Settings) -> AsyncIterator[tuple[Gateway, str]]:
    """The gateway serving on a free loopback port; yields (app, base URL); stops (draining) on exit."""
    settings.gateway.host = "127.0.0.1"
    settings.gateway.port = free_port()
    gateway = Gateway(settings)
    server = uvicorn.Server(uvicorn_config(settings, "warning", app=gateway))
    task = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started or task.done():
            break
        await asyncio.sleep(0.02)
    if task.done():
        task.result()
    try:
        yield gateway, f"http://127.0.0.1:{settings.gateway.port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)
