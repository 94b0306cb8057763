"""Console sign-in: server-side sessions behind an HttpOnly cookie, CSRF tokens, the login rate limit."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, delete

from careloop.console.users import User, get_user
from careloop.core.schema import ConsoleSession, utcnow

COOKIE = "careloop_session"


@dataclass(frozen=True)
class Principal:
    """Who is asking: a signed-in person (with their session's CSRF token) or the admin bearer token."""

    user: User
    csrf: str | None  # None for the bearer token (no cookie, so no cross-site forgery to guard against)
    token: str | None = None  # the session cookie's value

    @property
    def name(self) -> str:
        """The name the audit trail records."""
        return self.user.name


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_session(engine: Engine, user: User, ttl_s: float) -> tuple[str, str]:
    """Start a session for `user`: (cookie token, CSRF token). Expired sessions are swept on the way."""
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    now = utcnow()
    with Session(engine) as session:
        session.exec(delete(ConsoleSession).where(col(ConsoleSession.expires_at) < now))  # type: ignore[call-overload]
        session.add(ConsoleSession(id=_digest(token), user=user.name, csrf=csrf, created_at=now,
                                   expires_at=now + timedelta(seconds=ttl_s)))
        session.commit()
    return token, csrf


def session_principal(engine: Engine, token: str) -> Principal | None:
    """The principal of a live session cookie (None: unknown, expired, or its user disabled or gone)."""
    if not token or len(token) > 128:
        return None
    with Session(engine) as session:
        row = session.get(ConsoleSession, _digest(token))
        if row is None:
            return None
        expires = row.expires_at if row.expires_at.tzinfo else row.expires_at.replace(tzinfo=utcnow().tzinfo)
        if expires <= utcnow():
            session.delete(row)
            session.commit()
            return None
        csrf, name = row.csrf, row.user
    user = get_user(engine, name)
    if user is None or user.disabled:
        return None
    return Principal(user, csrf, token)


def end_session(engine: Engine, token: str) -> None:
    """Sign out: forget the session."""
    with Session(engine) as session:
        row = session.get(ConsoleSession, _digest(token))
        if row is not None:
            session.delete(row)
            session.commit()


def csrf_ok(expected: str | None, given: str | None) -> bool:
    """Whether a state change carries its session's CSRF token (constant-time compare)."""
    return bool(expected) and bool(given) and hmac.compare_digest(str(expected).encode(), str(given).encode())


class LoginLimiter:
    """Failed sign-ins per key (client address, name) in a sliding window; past the limit, refuse to try."""

    def __init__(self, max_failures: int, window_s: float, now: Callable[[], float] = time.monotonic) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self._failures: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()
        self._now = now

    def _live(self, key: str, now: float) -> deque[float]:
        q = self._failures[key]
        while q and q[0] <= now - self.window_s:
            q.popleft()
        return q

    def retry_after(self, *keys: str) -> float:
        """Seconds until any of `keys` may try again (0: may try now)."""
        now = self._now()
        with self._lock:
            waits = [q[0] + self.window_s - now for k in keys
                     if len(q := self._live(k, now)) >= self.max_failures]
        return max(waits, default=0.0)

    def failed(self, *keys: str) -> None:
        """Count one failed sign-in against each key."""
        now = self._now()
        with self._lock:
            for k in keys:
                self._live(k, now).append(now)

    def succeeded(self, *keys: str) -> None:
        """Forget a key's failures after a good sign-in."""
        with self._lock:
            for k in keys:
                self._failures.pop(k, None)
