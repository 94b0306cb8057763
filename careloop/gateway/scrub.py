"""Keep secrets and internal addresses out of log lines: URLs, host:port, IP addresses, credentials."""

from __future__ import annotations

import logging
import re

_PATTERNS = [
    (re.compile(r"(?i)\b(bearer|basic|token|api[_-]?key|password|passwd|secret)(\s*[=:]\s*|\s+)['\"]?[^\s'\",}]+"),
     r"\1\2[SECRET]"),
    (re.compile(r"(?i)\b[a-z][a-z0-9+.\-]*://[^\s'\"<>]+"), "[URL]"),
    (re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?\b"), "[HOST]"),
    (re.compile(r"(?i)\b(?:localhost|[a-z0-9\-]+(?:\.[a-z0-9\-]+)*\.(?:svc|local|internal|cluster|lan))(?::\d+)?\b"),
     "[HOST]"),
    (re.compile(r"(?i)\b[a-z][a-z0-9\-]*(?:\.[a-z0-9\-]+)*:\d{2,5}\b"), "[HOST]"),
    (re.compile(r"(?i)\bport\s+\d{2,5}\b"), "port [PORT]"),
]


def scrub(text: str) -> str:
    """`text` without credentials, URLs, IP addresses or host:port pairs."""
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text


class ScrubFilter(logging.Filter):
    """A logging filter that scrubs every record's message (and its exception text) before it is written."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record in place; never drops it."""
        try:
            message = record.getMessage()
        except Exception:
            message = str(record.msg)
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            message += f" ({type(exc).__name__}: {scrub(str(exc))[:300]})"
            record.exc_info = None
            record.exc_text = None
        record.msg, record.args = scrub(message), None
        return True


def install_log_scrubber() -> None:
    """Scrub every handler's output (root and uvicorn's own)."""
    for name in ("", "uvicorn", "uvicorn.error", "uvicorn.access"):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, ScrubFilter) for f in handler.filters):
                handler.addFilter(ScrubFilter())
