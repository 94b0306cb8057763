"""The adapter registry: versions, canary steps, promote and rollback, each recorded as an AdapterEvent.

Status moves candidate → canary → stable → retired, or to rolled_back from canary or stable. At most one
adapter is `stable` and at most one is `canary` at a time. When no adapter is stable, the base model is the
stable target. Every function here is synchronous and takes an Engine, so the gateway (in a thread), the
monitor, retrain and the CLI share it.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from careloop.core.schema import Adapter, AdapterEvent, AdapterStatus, utcnow
from careloop.core.store import is_sqlite


class RegistryError(ValueError):
    """A registry operation that does not fit the adapters' current states."""


def _lock(session: Session, engine: Engine) -> None:
    """Serialise registry writes across processes (PostgreSQL advisory lock; SQLite locks the file)."""
    if is_sqlite(str(engine.url)):
        return  # one writer at a time already (WAL + busy_timeout); single-machine setups only
    session.connection().exec_driver_sql("SELECT pg_advisory_xact_lock(72810419)")


def _event(session: Session, adapter: str, action: str, actor: str, reason: str,
           figures: dict[str, Any] | None) -> None:
    session.add(AdapterEvent(adapter=adapter, action=action, actor=actor, reason=reason,
                             figures=figures or {}))


def _get(session: Session, name: str) -> Adapter:
    row = session.get(Adapter, name)
    if row is None:
        raise RegistryError(f"no adapter named {name!r}")
    return row


def next_adapter_name(engine: Engine, base: str) -> tuple[str, int]:
    """The next unused `<base>-safety-v<N>` name and its N (names are never reused, even after deletion)."""
    prefix = f"{base}-safety-v"
    pattern = re.compile(re.escape(prefix) + r"(\d+)$")
    with Session(engine) as session:
        names = set(session.exec(select(Adapter.name)).all())
        names |= set(session.exec(select(AdapterEvent.adapter).distinct()).all())
    versions = [int(m.group(1)) for n in names if (m := pattern.match(n))]
    version = max(versions, default=0) + 1
    return f"{prefix}{version}", version


def register_adapter(
    engine: Engine, name: str, path: str, base_model: str, version: int, parent: str | None = None,
    run_id: int | None = None, data_counts: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None, actor: str = "auto",
) -> Adapter:
    """Add a trained adapter as a `candidate`; its name must be new."""
    with Session(engine, expire_on_commit=False) as session:
        _lock(session, engine)
        if session.get(Adapter, name) is not None:
            raise RegistryError(f"adapter {name!r} already exists; adapter names are never reused")
        row = Adapter(name=name, path=str(path), base_model=base_model, version=version, parent=parent,
                      run_id=run_id, data_counts=data_counts or {}, metrics=metrics or {},
                      status=AdapterStatus.CANDIDATE)
        session.add(row)
        _event(session, name, "register", actor, "", {"path": str(path), "version": version,
                                                      "parent": parent, "run_id": run_id,
                                                      **(metrics or {})})
        session.commit()
        return row


def set_canary(engine: Engine, name: str, fraction: float, actor: str = "auto", reason: str = "",
               figures: dict[str, Any] | None = None) -> Adapter:
    """Make a candidate the canary at `fraction` of users, or move the live canary to `fraction` (a step).

    A candidate cannot become the canary while another canary is live.
    """
    _check_fraction(fraction)
    with Session(engine, expire_on_commit=False) as session:
        _lock(session, engine)
        row = _get(session, name)
        if row.status not in (AdapterStatus.CANDIDATE, AdapterStatus.CANARY):
            raise RegistryError(f"{name} is {row.status}; only a candidate or the canary can take a canary share")
        if row.status == AdapterStatus.CANDIDATE:
            other = session.exec(select(Adapter).where(Adapter.status == AdapterStatus.CANARY)).first()
            if other is not None:
                raise RegistryError(f"{other.name} is already the canary; promote or roll it back first")
            action, event_figures = "canary", {"fraction": fraction}
        else:
            action, event_figures = "step", {"from": row.canary_fraction, "fraction": fraction}
        row.status, row.canary_fraction, row.updated_at = AdapterStatus.CANARY, fraction, utcnow()
        session.add(row)
        _event(session, name, action, actor, reason, {**event_figures, **(figures or {})})
        session.commit()
        return row


def await_approval(engine: Engine, name: str, reason: str, figures: dict[str, Any] | None = None) -> None:
    """Record that the canary `name` passed and waits for an operator to promote it (it stays the canary)."""
    with Session(engine) as session:
        _event(session, name, "await_approval", "auto", reason, figures)
        session.commit()


def promote(engine: Engine, name: str, actor: str = "auto", reason: str = "",
            figures: dict[str, Any] | None = None) -> Adapter:
    """Make `name` (candidate, canary or retired) the stable adapter; the old stable one is retired."""
    with Session(engine, expire_on_commit=False) as session:
        _lock(session, engine)
        row = _get(session, name)
        if row.status not in (AdapterStatus.CANDIDATE, AdapterStatus.CANARY, AdapterStatus.RETIRED):
            raise RegistryError(f"{name} is {row.status}; only a candidate, canary or retired adapter "
                                "can be promoted")
        now = utcnow()
        old = session.exec(select(Adapter).where(Adapter.status == AdapterStatus.STABLE)).first()
        if old is not None and old.name != name:
            old.status, old.updated_at = AdapterStatus.RETIRED, now
            session.add(old)
            _event(session, old.name, "retire", actor, f"replaced by {name}", {"replaced_by": name})
        row.status, row.canary_fraction, row.updated_at, row.promoted_at = AdapterStatus.STABLE, 0.0, now, now
        session.add(row)
        _event(session, name, "promote", actor, reason,
               {"previous": old.name if old is not None else None, **(figures or {})})
        session.commit()
        return row


def rollback(engine: Engine, actor: str = "auto", reason: str = "",
             figures: dict[str, Any] | None = None) -> str | None:
    """Roll back the live canary; with none, roll back the stable adapter to the one promoted before it.

    Returns the name of the adapter rolled back, or None when there was nothing to roll back. When the
    stable adapter is rolled back and no adapter was promoted before it, the base model serves again.
    """
    with Session(engine, expire_on_commit=False) as session:
        _lock(session, engine)
        now = utcnow()
        canary = session.exec(select(Adapter).where(Adapter.status == AdapterStatus.CANARY)).first()
        if canary is not None:
            canary.status, canary.canary_fraction, canary.updated_at = AdapterStatus.ROLLED_BACK, 0.0, now
            session.add(canary)
            _event(session, canary.name, "rollback", actor, reason, {"was": AdapterStatus.CANARY, **(figures or {})})
            session.commit()
            return canary.name
        stable = session.exec(select(Adapter).where(Adapter.status == AdapterStatus.STABLE)).first()
        if stable is None:
            return None
        stable.status, stable.updated_at = AdapterStatus.ROLLED_BACK, now
        session.add(stable)
        previous = session.exec(
            select(Adapter).where(Adapter.status == AdapterStatus.RETIRED, Adapter.promoted_at.is_not(None))  # type: ignore[union-attr]
            .order_by(Adapter.promoted_at.desc())  # type: ignore[union-attr]
        ).first()
        restored = previous.name if previous is not None else None
        if previous is not None:
            previous.status, previous.updated_at = AdapterStatus.STABLE, now
            session.add(previous)
            _event(session, previous.name, "restore", actor, f"{stable.name} rolled back",
                   {"replaces": stable.name})
        _event(session, stable.name, "rollback", actor, reason,
               {"was": AdapterStatus.STABLE, "restored": restored or "base", **(figures or {})})
        session.commit()
        return stable.name


def list_adapters(engine: Engine) -> list[Adapter]:
    """Every adapter in the registry, newest first."""
    with Session(engine, expire_on_commit=False) as session:
        return list(session.exec(select(Adapter).order_by(Adapter.created_at.desc(),  # type: ignore[attr-defined]
                                                           Adapter.version.desc())).all())  # type: ignore[attr-defined]


def get_adapter(engine: Engine, name: str) -> Adapter | None:
    """One adapter by name (None if unknown)."""
    with Session(engine, expire_on_commit=False) as session:
        return session.get(Adapter, name)


def adapter_events(engine: Engine, name: str | None = None, limit: int = 100) -> list[AdapterEvent]:
    """The latest registry decisions (for one adapter or all), newest first."""
    with Session(engine, expire_on_commit=False) as session:
        query = select(AdapterEvent).order_by(AdapterEvent.id.desc()).limit(limit)  # type: ignore[union-attr]
        if name is not None:
            query = query.where(AdapterEvent.adapter == name)
        return list(session.exec(query).all())


def _check_fraction(fraction: float) -> None:
    if not 0.0 <= fraction <= 1.0:
        raise RegistryError(f"canary fraction must be within [0, 1], got {fraction}")
