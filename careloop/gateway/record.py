"""One exchange as the request path saw it (`Record`), and its encoding for the write-ahead log."""

from __future__ import annotations

import struct
from dataclasses import dataclass, fields
from typing import Any

import orjson

from careloop.gateway.quarantine import dumps_line


@dataclass(slots=True)
class Record:
    """One exchange as the request path saw it: raw, unparsed, unredacted (never leaves this process)."""

    id: str
    created: float  # epoch seconds at arrival
    public_model: str
    target: str
    role: str
    user_key: str | None
    request: dict[str, Any]
    response: bytes | list[bytes] | None  # whole body, or the SSE chunks as received
    status: int
    stream: bool
    sampled: bool
    latency_ms: float
    error: str | None = None
    # Operations (issue 23).
    request_id: str | None = None
    trace_id: str | None = None
    key_name: str | None = None
    wal_seq: int = 0  # the WAL segment holding it (0: not in the WAL)
    encoded: bytes | None = None  # `encode_record`'s bytes, once made (the WAL's plaintext; what row builders get)


_HEAD = struct.Struct(">I")
# Every field but the response bytes, the WAL position and the encoding itself, by name: a field added to
# Record travels too.
_WAL_FIELDS = tuple(f.name for f in fields(Record) if f.name not in ("response", "wal_seq", "encoded"))


def encode_record(r: Record) -> bytes:
    """The record as bytes for the write-ahead log: a JSON head (its fields), then the response as received."""
    head_obj = {name: getattr(r, name) for name in _WAL_FIELDS}
    head_obj["_kind"] = "none" if r.response is None else "sse" if isinstance(r.response, list) else "body"
    try:
        head = orjson.dumps(head_obj)
    except TypeError:
        head = dumps_line(head_obj).rstrip(b"\n")
    body = b"".join(r.response) if isinstance(r.response, list) else (r.response or b"")
    return _HEAD.pack(len(head)) + head + body


def decode_record(data: bytes) -> Record:
    """A record read back from the write-ahead log."""
    (n,) = _HEAD.unpack_from(data)
    head = orjson.loads(data[4:4 + n])
    body = data[4 + n:]
    kind = head.pop("_kind")
    response: bytes | list[bytes] | None = None if kind == "none" else [body] if kind == "sse" else body
    return Record(response=response, **{k: v for k, v in head.items() if k in _WAL_FIELDS})
