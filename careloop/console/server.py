"""Run the console: migrate the store, then serve the web app with uvicorn (off the gateway's hot path)."""

from __future__ import annotations

import logging

from careloop.core.settings import Settings


def run_console(settings: Settings, log_level: str = "warning") -> None:
    """Serve the console until SIGINT/SIGTERM."""
    import uvicorn

    from careloop.console.app import create_app
    from careloop.core.migrations import upgrade
    from careloop.core.store import make_engine

    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.WARNING),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    upgrade(settings.database_url or "")
    engine = make_engine(settings.database_url or "")
    try:
        uvicorn.run(create_app(settings, engine), host=settings.console.host, port=settings.console.port,
                    log_level=log_level, access_log=False, proxy_headers=False)
    finally:
        engine.dispose()
