"""Log lines lose credentials and internal addresses, keep clinical numbers."""

from __future__ import annotations

import logging

from careloop.gateway.scrub import ScrubFilter, scrub


def test_scrub_removes_secrets_urls_and_addresses() -> None:
    line = ("Cannot connect to host vllm-0.careloop.svc:8000 at http://10.0.3.7:8000/v1 with "
            "{'Authorization': 'Bearer sk-abc123'} password=hunter2; pg at 127.0.0.1, port 5432")
    out = scrub(line)
    for secret in ("vllm-0", "10.0.3.7", "sk-abc123", "hunter2", "127.0.0.1", "5432", "http://"):
        assert secret not in out, secret


def test_scrub_keeps_doses_times_and_pressures() -> None:
    text = "metformin 500 mg at 12:30, BP 142/91, hydrocodone 10/325 mg"
    assert scrub(text) == text


def test_filter_rewrites_records_and_exception_text() -> None:
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "store down: %s", ("postgresql://u:pw@db:5432/x",),
                               None)
    try:
        raise ConnectionError("connection to server at 10.1.1.1, port 5432 failed")
    except ConnectionError as exc:
        record.exc_info = (type(exc), exc, exc.__traceback__)
    assert ScrubFilter().filter(record)
    message = record.getMessage()
    assert "pw@db" not in message and "10.1.1.1" not in message and "ConnectionError" in message
