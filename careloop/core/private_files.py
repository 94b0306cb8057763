"""Files and folders only the service's own user may read: 0600 files, 0700 folders, secrets made on first start."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700


def private_dir(path: Path) -> Path:
    """Create `path` (and parents) as 0700; tighten it if it already exists and is ours."""
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    with contextlib.suppress(OSError):
        if path.stat().st_mode & 0o077:
            path.chmod(DIR_MODE)
    return path


def open_private(path: Path, flags: int = os.O_WRONLY | os.O_CREAT | os.O_APPEND) -> int:
    """A raw fd on `path`, created 0600 (an existing file is tightened to 0600)."""
    fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
    with contextlib.suppress(OSError):
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, FILE_MODE)
    return fd


def append_private(path: Path, data: bytes) -> None:
    """Append `data` to `path` (created 0600) and fsync it."""
    fd = open_private(path)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically (temp file, fsync, rename), 0600."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.replace(path)


def touch_private(path: Path) -> None:
    """Make sure `path` exists as a 0600 file (e.g. a SQLite database before SQLite creates it 0644)."""
    private_dir(path.parent)
    os.close(open_private(path, os.O_WRONLY | os.O_CREAT))


def load_or_create_secret(path: Path, nbytes: int = 32) -> bytes:
    """The secret kept in `path`; created (random, 0600) on first use. Several processes may race: one wins."""
    with contextlib.suppress(FileNotFoundError):
        data = path.read_bytes()
        if len(data) >= 16:
            return data
    private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.new")
    fd = open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        os.write(fd, secrets.token_bytes(nbytes))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails if another process created it first: theirs wins
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_bytes()
