"""Dead letters: exchange rows the store rejected, and spool or WAL files that could not be read.

A row the store refuses for what it holds (a NUL byte PostgreSQL cannot keep, an over-long value, a broken
constraint) is written here on its own, with the reason, and every other row of its batch is stored as usual.
Rows are already redacted when they get here. Files are 0600 in a 0700 folder: `quarantine/rows-<day>.jsonl`
(one JSON object per line: `reason`, `at`, `row`) and `quarantine/files/` for whole unreadable files.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from careloop.core.private_files import append_private, open_private, private_dir


def dumps_line(obj: Any) -> bytes:
    """One JSON line for any row: orjson, or the standard library for what orjson refuses (lone surrogates)."""
    try:
        return orjson.dumps(obj, option=orjson.OPT_APPEND_NEWLINE)
    except TypeError:
        return json.dumps(obj, default=_fallback, ensure_ascii=True).encode() + b"\n"


def _fallback(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return repr(value)


def reason_of(exc: BaseException) -> str:
    """A short reason for a rejected row: the driver's error class and first line, never the row's values."""
    orig = getattr(exc, "orig", None) or exc
    first = str(orig).strip().splitlines()[0] if str(orig).strip() else ""
    return f"{type(orig).__name__}: {first[:300]}"


class Quarantine:
    """The dead-letter folder and its counters."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.rows = 0
        self.files = 0
        self._lock = threading.Lock()

    def add_rows(self, rows: list[tuple[dict[str, Any], str]]) -> None:
        """Keep each (row, reason) aside, fsynced, one line each."""
        if not rows:
            return
        private_dir(self.folder)
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        data = b"".join(dumps_line({"reason": reason, "at": at, "row": row}) for row, reason in rows)
        with self._lock:
            append_private(self.folder / f"rows-{at[:10]}.jsonl", data)
            self.rows += len(rows)

    def add_file(self, path: Path, reason: str) -> Path:
        """Move a whole file that could not be replayed out of the way (with a `.reason` note beside it)."""
        dest_dir = private_dir(self.folder / "files")
        dest = dest_dir / f"{time.time_ns()}-{path.name}"
        shutil.move(str(path), dest)
        os.chmod(dest, 0o600)
        fd = open_private(dest.with_name(dest.name + ".reason"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            os.write(fd, reason.encode() + b"\n")
        finally:
            os.close(fd)
        with self._lock:
            self.files += 1
        return dest

    def count_rows(self) -> int:
        """Rows in the quarantine on disk (all processes, all days)."""
        total = 0
        for path in self.folder.glob("rows-*.jsonl"):
            with path.open("rb") as fh:
                total += sum(1 for line in fh if line.strip())
        return total
