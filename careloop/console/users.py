"""People who may sign in to the console: roles, argon2id password hashes, disable and reset."""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, delete, select

from careloop.core.schema import ConsoleSession, ConsoleUser, utcnow

ROLES = ("reviewer", "approver", "admin")  # each role may do what the ones before it may
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_hasher = PasswordHasher()  # argon2id, the library's defaults (RFC 9106 low-memory profile)
# A hash to verify against when the name is unknown, so a wrong name takes as long as a wrong password.
_DUMMY_HASH = _hasher.hash("not a real password, only for timing")


class UserError(ValueError):
    """A user operation that cannot be done (unknown or taken name, bad role, short password)."""


@dataclass(frozen=True)
class User:
    """A console user as the pages see it (never the hash)."""

    name: str
    role: str
    disabled: bool

    def can(self, role: str) -> bool:
        """Whether this user holds `role` or a higher one."""
        return role_rank(self.role) >= role_rank(role)


def role_rank(role: str) -> int:
    """A role's place in reviewer < approver < admin."""
    if role not in ROLES:
        raise UserError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    return ROLES.index(role)


def _check_password(password: str, min_length: int) -> None:
    if len(password) < min_length:
        raise UserError(f"the password must be at least {min_length} characters long")


def add_user(engine: Engine, name: str, role: str, password: str, min_length: int = 10) -> User:
    """Create a user with an argon2id hash of `password`."""
    if not NAME_RE.match(name):
        raise UserError("a name is 1-64 letters, digits or . _ @ - (starting with a letter or digit)")
    role_rank(role)
    _check_password(password, min_length)
    with Session(engine) as session:
        if session.get(ConsoleUser, name) is not None:
            raise UserError(f"user {name!r} already exists")
        session.add(ConsoleUser(name=name, role=role, password_hash=_hasher.hash(password)))
        session.commit()
    return User(name, role, False)


def list_users(engine: Engine) -> list[User]:
    """Every user, by name."""
    with Session(engine) as session:
        rows = session.exec(select(ConsoleUser).order_by(col(ConsoleUser.name))).all()
        return [User(r.name, r.role, r.disabled) for r in rows]


def get_user(engine: Engine, name: str) -> User | None:
    """One user by name (None if unknown)."""
    with Session(engine) as session:
        row = session.get(ConsoleUser, name)
        return User(row.name, row.role, row.disabled) if row is not None else None


def _end_sessions(session: Session, name: str) -> None:
    session.exec(delete(ConsoleSession).where(col(ConsoleSession.user) == name))  # type: ignore[call-overload]


def set_disabled(engine: Engine, name: str, disabled: bool = True) -> User:
    """Disable (or enable again) a user; disabling signs them out everywhere at once."""
    with Session(engine) as session:
        row = session.get(ConsoleUser, name)
        if row is None:
            raise UserError(f"no user {name!r}")
        row.disabled, row.updated_at = disabled, utcnow()
        session.add(row)
        if disabled:
            _end_sessions(session, name)
        session.commit()
        return User(row.name, row.role, row.disabled)


def reset_password(engine: Engine, name: str, password: str, min_length: int = 10) -> User:
    """Set a new password and sign the user out everywhere."""
    _check_password(password, min_length)
    with Session(engine) as session:
        row = session.get(ConsoleUser, name)
        if row is None:
            raise UserError(f"no user {name!r}")
        row.password_hash, row.updated_at = _hasher.hash(password), utcnow()
        session.add(row)
        _end_sessions(session, name)
        session.commit()
        return User(row.name, row.role, row.disabled)


def authenticate(engine: Engine, name: str, password: str) -> User | None:
    """The user if `password` is theirs and they are enabled; None otherwise (same work either way)."""
    with Session(engine) as session:
        row = session.get(ConsoleUser, name)
        stored = row.password_hash if row is not None else _DUMMY_HASH
        ok = False
        with contextlib.suppress(VerificationError, InvalidHashError):
            ok = bool(_hasher.verify(stored, password))
        if not ok or row is None or row.disabled:
            return None
        if _hasher.check_needs_rehash(row.password_hash):
            row.password_hash = _hasher.hash(password)
            session.add(row)
            session.commit()
        return User(row.name, row.role, row.disabled)
