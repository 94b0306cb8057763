"""The traffic log's write-ahead log: each answered exchange is appended here before its response ends.

One process owns one folder `wal/<pid>-<ns>/` (0700) and holds an exclusive `flock` on its `lock` file for its
whole life; a folder whose lock can be taken belongs to a process that died, and the next start replays it.
Records are appended to segment files (0600) with one `write` each, on the event loop, before the last byte
of the response goes out: a SIGKILL after that cannot lose the exchange (the kernel has the bytes). `sync`
(fdatasync) is group-committed by the writer thread once per batch, on a segment appends have moved on from,
which bounds what a power loss can lose to one flush interval without a syscall per request.

The log holds raw, unredacted exchanges (redaction runs later, off the event loop, where it does not hold up
the response), so every record is encrypted with AES-256-GCM under a per-folder key derived from a 0600 key
file. A segment is deleted as soon as every record in it has reached the store, the spool or the quarantine,
so the log only ever holds the last few hundred milliseconds of traffic.

Frame: 4-byte big-endian length, then nonce (12 bytes: 4 random + 8-byte counter) + ciphertext + tag.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import logging
import os
import secrets
import shutil
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from careloop.core.private_files import open_private, private_dir

log = logging.getLogger("careloop.wal")

_LEN = struct.Struct(">I")
MAX_FRAME = 64 << 20


def folder_key(master: bytes, folder: str) -> AESGCM:
    """The AES-GCM key of one WAL folder: HMAC-SHA256(master, folder name), so nonces restart per folder."""
    return AESGCM(hmac.new(master, folder.encode(), hashlib.sha256).digest())


@dataclass
class _Segment:
    seq: int
    path: Path
    fd: int
    pending: int = 0
    closed: bool = False
    size: int = 0


@dataclass
class Wal:
    """This process's write-ahead log (one folder, rotating segments)."""

    root: Path
    master_key: bytes
    segment_bytes: int = 32 << 20
    folder: Path = field(init=False)
    _lock_fd: int = field(init=False, default=-1)
    _segments: dict[int, _Segment] = field(init=False, default_factory=dict)
    _current: _Segment | None = field(init=False, default=None)
    _seq: int = field(init=False, default=0)
    _counter: int = field(init=False, default=0)
    _dirty: bool = field(init=False, default=False)
    _mutex: threading.Lock = field(init=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        private_dir(self.root)
        name = f"{os.getpid()}-{time.time_ns()}"
        self.folder = private_dir(self.root / name)
        self._lock_fd = open_private(self.folder / "lock", os.O_WRONLY | os.O_CREAT)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._aead = folder_key(self.master_key, name)
        self._prefix = secrets.token_bytes(4)
        self._rotate()

    def _rotate(self) -> None:
        if self._current is not None:
            self._current.closed = True
            self._close_if_done(self._current)
        self._seq += 1
        path = self.folder / f"{self._seq:08d}.wal"
        self._current = _Segment(self._seq, path, open_private(path))
        self._segments[self._seq] = self._current

    def append(self, payload: bytes) -> int:
        """Encrypt and append one record; returns its segment number (hand it back to `done`)."""
        self._counter += 1
        nonce = self._prefix + self._counter.to_bytes(8, "big")
        body = nonce + self._aead.encrypt(nonce, payload, None)
        frame = _LEN.pack(len(body)) + body
        with self._mutex:
            seg = self._current
            assert seg is not None
            os.write(seg.fd, frame)
            seg.pending += 1
            seg.size += len(frame)
            self._dirty = True
            if seg.size >= self.segment_bytes:
                self._rotate()
            return seg.seq

    def sync(self) -> None:
        """Flush what was appended to the disk (group commit: once per writer batch, not per request).

        The segment being synced is first closed to appends (appends go to a fresh one), so the event loop's
        `write` never waits behind this thread's `fdatasync` on the same file."""
        with self._mutex:
            if not self._dirty or self._current is None:
                return
            seg, self._dirty = self._current, False
            self._rotate()
        with contextlib.suppress(OSError):
            os.fdatasync(seg.fd)
        with self._mutex:
            self._close_if_done(seg)

    def done(self, seqs: list[int]) -> None:
        """Records of these segments are safe elsewhere; delete segments nothing in them still needs."""
        with self._mutex:
            for seq in seqs:
                seg = self._segments.get(seq)
                if seg is not None:
                    seg.pending -= 1
            for seg in [s for s in self._segments.values() if s.closed]:
                self._close_if_done(seg)

    def _close_if_done(self, seg: _Segment) -> None:
        if seg.closed and seg.pending <= 0 and seg.seq in self._segments:
            with contextlib.suppress(OSError):
                os.close(seg.fd)
            seg.path.unlink(missing_ok=True)
            self._segments.pop(seg.seq, None)

    @property
    def pending(self) -> int:
        """Records appended and not yet safe elsewhere."""
        return sum(s.pending for s in self._segments.values())

    def close(self) -> None:
        """Sync and close; the folder is removed when nothing in it is still pending (else the next start
        replays it)."""
        with self._mutex:
            pending = sum(s.pending for s in self._segments.values())
            for seg in self._segments.values():
                with contextlib.suppress(OSError):
                    os.fdatasync(seg.fd)
                    os.close(seg.fd)
            self._segments.clear()
            self._current = None
        if pending <= 0:
            shutil.rmtree(self.folder, ignore_errors=True)
        else:
            log.warning("%d exchanges left in the write-ahead log %s; the next start stores them", pending,
                        self.folder)
        with contextlib.suppress(OSError):
            os.close(self._lock_fd)


@dataclass
class Orphan:
    """A WAL folder left by a process that is gone, locked by us while we replay it."""

    folder: Path
    lock_fd: int

    def release(self, remove: bool) -> None:
        """Let go of the folder; delete it once replayed."""
        if remove:
            shutil.rmtree(self.folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.close(self.lock_fd)


def orphans(root: Path) -> list[Orphan]:
    """WAL folders under `root` whose owner died (their lock is free), locked for replay."""
    out: list[Orphan] = []
    if not root.is_dir():
        return out
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            fd = open_private(folder / "lock", os.O_WRONLY | os.O_CREAT)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)  # a live process owns it
            continue
        out.append(Orphan(folder, fd))
    return out


@dataclass
class SegmentRead:
    """What one segment file held: the records that decrypted, and whether the file ended cleanly."""

    path: Path
    records: list[bytes]
    error: str | None = None  # why reading stopped early (torn tail, bad frame); None if it ended cleanly


def read_segments(orphan: Orphan, master_key: bytes) -> Iterator[SegmentRead]:
    """Every segment of an orphaned folder, in order, decrypted frame by frame.

    A frame that does not decrypt ends that file (a torn tail after a crash, or damage): the records before
    it are returned and the error says why; the next file is read regardless.
    """
    aead = folder_key(master_key, orphan.folder.name)
    for path in sorted(orphan.folder.glob("*.wal")):
        records: list[bytes] = []
        error = None
        try:
            data = path.read_bytes()
        except OSError as exc:
            yield SegmentRead(path, [], f"unreadable: {type(exc).__name__}")
            continue
        pos = 0
        while pos < len(data):
            if pos + 4 > len(data):
                error = "torn frame header at the end"
                break
            (size,) = _LEN.unpack_from(data, pos)
            if size < 28 or size > MAX_FRAME or pos + 4 + size > len(data):
                error = f"bad or torn frame at byte {pos}"
                break
            body = data[pos + 4:pos + 4 + size]
            try:
                records.append(aead.decrypt(body[:12], body[12:], None))
            except Exception:
                error = f"frame at byte {pos} does not decrypt"
                break
            pos += 4 + size
        yield SegmentRead(path, records, error)
