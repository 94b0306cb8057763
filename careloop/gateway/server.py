"""Run the gateway: uvicorn with uvloop + httptools, one worker, graceful shutdown that drains the log."""

from __future__ import annotations

import logging
import os
import sys

import uvicorn

from careloop.core.settings import Settings
from careloop.gateway.app import Gateway, create_app
from careloop.gateway.limits import HeadLimits, guarded_protocol
from careloop.gateway.scrub import install_log_scrubber


def uvicorn_config(settings: Settings, log_level: str = "info", app: Gateway | None = None) -> uvicorn.Config:
    """The uvicorn configuration the gateway runs with (also used by tests)."""
    gateway = app or create_app(settings, freeze_gc=True)
    return uvicorn.Config(
        gateway,
        host=settings.gateway.host,
        port=settings.gateway.port,
        loop="uvloop",
        http=guarded_protocol(HeadLimits.of(settings.gateway), gateway.metrics),
        lifespan="on",
        workers=1,
        access_log=False,
        log_level=log_level,
        backlog=4096,
        timeout_keep_alive=75,
        timeout_graceful_shutdown=30,
        server_header=False,
        date_header=False,
    )


def run_gateway(settings: Settings, log_level: str = "info") -> None:
    """Serve until SIGINT/SIGTERM; on shutdown, in-flight requests finish and the traffic log drains."""
    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Everything the gateway creates (SQLite files, spool, WAL, quarantine, its folders) is 0600 / 0700; folders
    # that already exist (a shared data dir other processes also read) are left as they are.
    os.umask(0o077)
    settings.ensure_dirs()
    # The traffic-log thread parses and redacts batches; a shorter GIL switch interval hands the event loop
    # the GIL back within ~1 ms instead of 5 ms, which is what keeps the p99 of the gateway's own time low.
    sys.setswitchinterval(settings.gateway.gil_switch_interval_s)
    config = uvicorn_config(settings, log_level)
    install_log_scrubber()  # after uvicorn set up its handlers: no secret or internal address in a log line
    uvicorn.Server(config).run()
