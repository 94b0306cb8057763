"""The audit trail: who did what to what, when and why (every label, approval, promotion, rollback, judge or
user change), written by the console, the admin API, `careloop review` and `careloop users`."""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from careloop.core.schema import AuditEntry, utcnow

# The actions the trail knows; anything else is refused so a typo cannot hide an action from a filter.
ACTIONS = ("label", "approve", "reject", "promote", "rollback", "canary", "retrain", "judge_switch",
           "recalibrate", "login", "logout", "user_add", "user_disable", "user_enable", "user_reset_password")
TOKEN_ACTOR = "admin-token"  # what the trail names a caller of the admin API with the bearer token


@dataclass(frozen=True)
class Actor:
    """Who acts: a person's name and role, or the admin token, or a command on the host."""

    name: str
    role: str = ""


def cli_actor() -> Actor:
    """Whoever runs a `careloop` command on the host (`cli:<login name>`; an admin: they hold the store)."""
    try:
        who = getpass.getuser()
    except (KeyError, OSError):
        who = "?"
    return Actor(f"cli:{who}", "admin")


def record(engine: Engine, actor: Actor, action: str, target: str = "", reason: str = "",
           details: dict[str, Any] | None = None) -> AuditEntry:
    """Append one entry to the audit trail (its own transaction)."""
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}")
    entry = AuditEntry(actor=actor.name[:64], role=actor.role[:16], action=action, target=target[:128],
                       reason=reason, details=details or {}, created_at=utcnow())
    with Session(engine, expire_on_commit=False) as session:
        session.add(entry)
        session.commit()
    return entry


def entries(engine: Engine, limit: int = 100, actor: str | None = None, action: str | None = None,
            target: str | None = None, before_id: int | None = None,
            since: datetime | None = None) -> list[AuditEntry]:
    """The latest entries, newest first, optionally filtered."""
    query = select(AuditEntry)
    if actor:
        query = query.where(AuditEntry.actor == actor)
    if action:
        query = query.where(AuditEntry.action == action)
    if target:
        query = query.where(AuditEntry.target == target)
    if before_id is not None:
        query = query.where(col(AuditEntry.id) < before_id)
    if since is not None:
        query = query.where(col(AuditEntry.created_at) >= since)
    with Session(engine, expire_on_commit=False) as session:
        return list(session.exec(query.order_by(col(AuditEntry.id).desc()).limit(limit)).all())
