"""Client API keys: made once and shown once, stored as a sha256 hash, checked from an in-memory ring.

A key is `ck-` plus 43 URL-safe characters (256 random bits). Only its sha256 is stored (`client_key.key_hash`)
with a short prefix to recognise it in a list; with that much randomness a plain hash is as strong as a slow
one (there is nothing to guess). Each gateway keeps every live key in a dict by hash, re-read from the store
every `keys.refresh_s` and at once (at most once a second) when an unknown key is presented, so the check on
the request path is one sha256 and one dict lookup.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import secrets
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from careloop.core.schema import ClientKey, utcnow
from careloop.core.settings import Settings
from careloop.core.store import session_scope
from careloop.gateway.errors import GatewayError

log = logging.getLogger("careloop.keys")
PREFIX = "ck-"
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


class KeyAdminError(ValueError):
    """A key operation that cannot be done (bad name, duplicate, unknown key)."""


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What the request path needs to know about a live key."""

    name: str
    rpm: int | None
    tpm: int | None
    expires_at: float | None  # epoch seconds


def hash_key(key: str) -> str:
    """The stored form of a key: sha256 hex."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _check_limits(rpm: int | None, tpm: int | None) -> None:
    for label, value in (("rpm", rpm), ("tpm", tpm)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise KeyAdminError(f"{label} must be a positive integer")


def create_key(engine: Engine, name: str, rpm: int | None = None, tpm: int | None = None,
               expires_at: datetime | None = None) -> tuple[str, ClientKey]:
    """Make a key: returns (the key, shown only now, and its stored row)."""
    if not name or len(name) > 64 or not set(name) <= _NAME_CHARS:
        raise KeyAdminError("a key name is 1-64 characters of letters, digits, '-', '_' and '.'")
    _check_limits(rpm, tpm)
    key = PREFIX + secrets.token_urlsafe(32)
    row = ClientKey(name=name, key_hash=hash_key(key), prefix=key[:10], rpm=rpm, tpm=tpm,
                    expires_at=_aware(expires_at))
    with session_scope(engine) as session:
        if session.get(ClientKey, name) is not None:
            raise KeyAdminError(f"a key named {name!r} already exists")
        session.add(row)
    return key, row


def list_keys(engine: Engine) -> list[ClientKey]:
    """Every key row, revoked ones included (never the key itself: it is not stored)."""
    with Session(engine) as session:
        return list(session.exec(select(ClientKey).order_by(col(ClientKey.created_at))).all())


def revoke_key(engine: Engine, name: str) -> ClientKey:
    """Revoke a key by name (it stops working on every gateway within `keys.refresh_s`)."""
    with session_scope(engine) as session:
        row = session.get(ClientKey, name)
        if row is None:
            raise KeyAdminError(f"no key named {name!r}")
        if row.revoked_at is None:
            row.revoked_at = utcnow()
            session.add(row)
        return row


def key_dict(row: ClientKey) -> dict[str, object]:
    """A key row as JSON (name, prefix, limits, dates; never a hash or the key)."""
    expires = _aware(row.expires_at)
    created = _aware(row.created_at)
    return {"name": row.name, "prefix": row.prefix, "rpm": row.rpm, "tpm": row.tpm,
            "created_at": created.isoformat() if created else None,
            "expires_at": expires.isoformat() if expires else None,
            "revoked_at": row.revoked_at.isoformat() if row.revoked_at else None,
            "active": row.revoked_at is None and (expires is None or expires > utcnow())}


def parse_expiry(value: str, now: datetime | None = None) -> datetime:
    """An expiry given as a duration (`90d`, `12h`, `30m`) or an ISO date/time (UTC when no zone is given)."""
    value = value.strip()
    units = {"d": 86400, "h": 3600, "m": 60}
    if value[-1:] in units and value[:-1].isdigit():
        return (now or utcnow()) + timedelta(seconds=int(value[:-1]) * units[value[-1]])
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise KeyAdminError(f"expiry {value!r} is neither a duration like 90d/12h/30m nor an ISO date") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def load_live(engine: Engine) -> dict[str, KeyInfo]:
    """Every key not revoked, by hash."""
    with Session(engine) as session:
        rows = session.exec(select(ClientKey).where(col(ClientKey.revoked_at).is_(None))).all()
    out = {}
    for r in rows:
        expires = _aware(r.expires_at)
        out[r.key_hash] = KeyInfo(r.name, r.rpm, r.tpm, expires.timestamp() if expires else None)
    return out


def is_loopback(host: str) -> bool:
    """Whether a bind address only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def keys_required(settings: Settings) -> bool:
    """Whether `/v1/*` needs a client key: `keys.require`, where auto means "unless bound to loopback"."""
    mode = settings.keys.require
    if mode == "auto":
        return not is_loopback(settings.gateway.host)
    return mode == "on"


def startup_message(settings: Settings) -> tuple[int, str]:
    """(log level, line) saying whether client keys are required and why."""
    host, mode = settings.gateway.host, settings.keys.require
    if keys_required(settings):
        return logging.INFO, (f"client keys REQUIRED on /v1/* (Authorization: Bearer <key>; bound to {host}, "
                              f"keys.require={mode}); create one with `careloop keys create NAME`")
    if is_loopback(host):
        return logging.WARNING, (f"client keys NOT required on /v1/*: bound to loopback {host} "
                                 f"(keys.require={mode}); set CARELOOP_KEYS__REQUIRE=on to require them")
    return logging.WARNING, (f"client keys NOT required on /v1/* although bound to {host}: "
                             "CARELOOP_KEYS__REQUIRE=off lets anyone who reaches this port use the assistant")


def unauthorized(message: str) -> GatewayError:
    """401 with OpenAI's body for a missing or wrong key."""
    return GatewayError(401, message, "invalid_request_error", "invalid_api_key")


class KeyRing:
    """The live keys of this gateway, by hash, refreshed from the store."""

    def __init__(self, engine: Engine, refresh_s: float = 5.0, required: bool = True,
                 cache: Path | None = None) -> None:
        self.engine = engine
        self.refresh_s = refresh_s
        self.required = required
        self.cache = cache  # the last key view read (hashes, names, limits; never a key), for a store-down start
        self.by_hash: dict[str, KeyInfo] = {}
        self._loaded_at = float("-inf")
        self._task: asyncio.Task[None] | None = None
        self._reload: asyncio.Task[None] | None = None

    async def reload(self) -> None:
        """Re-read the keys from the store now (keeps the old ones if the store is down)."""
        try:
            keys = await asyncio.to_thread(load_live, self.engine)
        except Exception as exc:
            if not self.by_hash and self.cache is not None and self.cache.exists():
                self.by_hash = {h: KeyInfo(**v) for h, v in orjson.loads(self.cache.read_bytes()).items()}
            log.warning("could not read client keys (keeping %d known): %s", len(self.by_hash), exc)
        else:
            if keys != self.by_hash and self.cache is not None:
                with contextlib.suppress(OSError):
                    tmp = self.cache.with_suffix(".tmp")
                    tmp.write_bytes(orjson.dumps({h: asdict(k) for h, k in keys.items()}))
                    tmp.replace(self.cache)
            self.by_hash = keys
        self._loaded_at = time.monotonic()

    def start(self) -> None:
        """Keep the ring fresh in the background."""
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="client-keys-refresh")

    async def stop(self) -> None:
        """Stop refreshing."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            await self.reload()

    async def authenticate(self, authorization: bytes | None) -> KeyInfo | None:
        """The live key an `Authorization` header names, or None (anonymous).

        Keys required: 401 for a missing, malformed, unknown, revoked or expired key. Keys not required (a
        loopback gateway): a known live key is still attributed and rate limited, anything else is served
        anonymously (OpenAI clients always send some key).
        """
        if authorization is None:
            if self.required:
                raise unauthorized("a client key is required: send 'Authorization: Bearer <key>'")
            return None
        scheme, _, token = authorization.decode("latin-1").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            if self.required:
                raise unauthorized("the Authorization header must be 'Bearer <key>'")
            return None
        digest = hash_key(token)
        info = self.by_hash.get(digest)
        if info is None and time.monotonic() - self._loaded_at >= 1.0:
            if self._reload is None or self._reload.done():  # one store read however many misses at once
                self._reload = asyncio.ensure_future(self.reload())
            if self.required:  # an open gateway does not make an anonymous client wait for the store
                await asyncio.shield(self._reload)
                info = self.by_hash.get(digest)
        if info is None:
            if self.required:
                raise unauthorized("the client key is not valid (unknown or revoked)")
            return None
        if info.expires_at is not None and info.expires_at <= time.time():
            if self.required:
                raise unauthorized(f"the client key '{info.name}' has expired")
            return None
        return info
