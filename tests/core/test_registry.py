"""The adapter registry: unique names, canary, promote, rollback to the previous stable or the base model."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import Engine

from careloop.core import registry
from careloop.core.registry import RegistryError
from careloop.core.store import init_db, make_engine


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path) -> Engine:
    url = f"sqlite:///{tmp_path / 'reg.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    eng = make_engine(url)
    init_db(eng)
    with eng.begin() as conn:
        conn.exec_driver_sql("DELETE FROM adapter")
        conn.exec_driver_sql("DELETE FROM adapter_event")
    return eng


def _add(engine: Engine, base: str = "smol") -> str:
    name, version = registry.next_adapter_name(engine, base)
    registry.register_adapter(engine, name, f"/adapters/{name}", base, version, metrics={"overall": 0.7})
    return name


def _statuses(engine: Engine) -> dict[str, str]:
    return {a.name: a.status for a in registry.list_adapters(engine)}


def test_names_are_unique_and_never_reused(engine: Engine) -> None:
    assert registry.next_adapter_name(engine, "smol") == ("smol-safety-v1", 1)
    first = _add(engine)
    second = _add(engine)
    assert (first, second) == ("smol-safety-v1", "smol-safety-v2")
    with pytest.raises(RegistryError):
        registry.register_adapter(engine, first, "/x", "smol", 1)
    registry.set_canary(engine, second, 0.1)
    registry.rollback(engine)
    assert registry.next_adapter_name(engine, "smol") == ("smol-safety-v3", 3)


def test_canary_promote_and_rollback_chain(engine: Engine) -> None:
    v1, v2 = _add(engine), _add(engine)
    assert registry.rollback(engine) is None  # nothing live: the base model serves
    registry.set_canary(engine, v1, 0.1)
    with pytest.raises(RegistryError):
        registry.set_canary(engine, v2, 0.1)  # one canary at a time
    registry.set_canary(engine, v1, 0.5, figures={"n": 40})
    row = registry.get_adapter(engine, v1)
    assert row is not None and row.canary_fraction == 0.5
    registry.promote(engine, v1, reason="no worse")
    assert _statuses(engine) == {v1: "stable", v2: "candidate"}
    registry.set_canary(engine, v2, 0.1)
    registry.promote(engine, v2, actor="operator")
    assert _statuses(engine) == {v1: "retired", v2: "stable"}
    # No canary: the stable one rolls back and the previously promoted one is stable again.
    assert registry.rollback(engine, actor="operator", reason="worse") == v2
    assert _statuses(engine) == {v1: "stable", v2: "rolled_back"}
    # Again: nothing was promoted before v1, so the base model serves.
    assert registry.rollback(engine) == v1
    assert _statuses(engine) == {v1: "rolled_back", v2: "rolled_back"}
    actions = [(e.adapter, e.action, e.actor) for e in reversed(registry.adapter_events(engine))]
    assert (v2, "rollback", "operator") in actions and (v1, "restore", "operator") in actions
    assert actions[0] == (v1, "register", "auto")


def test_rollback_prefers_the_canary(engine: Engine) -> None:
    v1, v2 = _add(engine), _add(engine)
    registry.promote(engine, v1)
    registry.set_canary(engine, v2, 0.2)
    assert registry.rollback(engine, reason="canary worse", figures={"ss": 0.5}) == v2
    assert _statuses(engine) == {v1: "stable", v2: "rolled_back"}
    with pytest.raises(RegistryError):
        registry.promote(engine, v2)  # a rolled-back adapter never comes back
    with pytest.raises(RegistryError):
        registry.set_canary(engine, v1, 0.5)
    with pytest.raises(RegistryError):
        registry.set_canary(engine, v2, 1.5)
