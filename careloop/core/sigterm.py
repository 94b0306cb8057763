"""SIGTERM as a normal exit, so `finally` blocks and context managers clean up on the way out."""

from __future__ import annotations

import signal


def exit_on_sigterm() -> None:
    """Turn SIGTERM (a stopped Job, the launcher, a supervisor) into SystemExit(128 + signum) so cleanup runs."""

    def _exit(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)
