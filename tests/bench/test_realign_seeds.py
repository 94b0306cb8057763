"""bench/realign_seeds.py: every seed runs on its own copy of the same store; the spread is over the runs."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import pytest

from careloop.core import registry
from careloop.core.settings import REPO_ROOT, Settings
from careloop.core.store import init_db, live_adapters, make_engine

sys.path.insert(0, str(REPO_ROOT / "bench"))

from realign_seeds import seeded_home, summarise


def test_each_seed_gets_a_copy_of_the_traffic_and_the_source_models(settings: Settings, tmp_path: Path) -> None:
    db = Path((settings.database_url or "").removeprefix("sqlite:///"))
    init_db(make_engine(settings.database_url or ""))
    with sqlite3.connect(db) as conn:
        conn.execute("delete from exchange")
        conn.execute("create table marker (id text)")
        conn.execute("insert into marker values ('x1')")
    (settings.models_dir / "marker").write_text("model")
    one, two = seeded_home(settings, 1, tmp_path / "runs"), seeded_home(settings, 2, tmp_path / "runs")
    assert (one.retrain.seed, two.retrain.seed) == (1, 2) and settings.retrain.seed == 0
    for s in (one, two):
        copy = Path((s.database_url or "").removeprefix("sqlite:///"))
        assert copy != db and copy.is_file()
        with sqlite3.connect(copy) as conn:
            assert conn.execute("select id from marker").fetchall() == [("x1",)]
        assert (s.models_dir / "marker").read_text() == "model"
    with sqlite3.connect(Path((one.database_url or "").removeprefix("sqlite:///"))) as conn:
        conn.execute("insert into marker values ('only-in-one')")
    with sqlite3.connect(db) as conn:
        assert conn.execute("select count(*) from marker").fetchone() == (1,)  # the source is untouched


def test_each_seed_starts_from_the_base_even_after_a_demo_promoted_an_adapter(settings: Settings,
                                                                             tmp_path: Path) -> None:
    engine = make_engine(settings.database_url or "")
    init_db(engine)
    for version in (1, 2):  # v1 promoted, then v2 promoted over it (v1 retired)
        name = f"m-safety-v{version}"
        registry.register_adapter(engine, name, str(tmp_path / name), "m", version, run_id=version)
        registry.set_canary(engine, name, 0.5)
        registry.promote(engine, name)
    assert live_adapters(engine)[0].name == "m-safety-v2"  # type: ignore[union-attr]
    copy = seeded_home(settings, 3, tmp_path / "runs")
    copied = make_engine(copy.database_url or "")
    assert live_adapters(copied) == (None, None)  # the base serves in the copy: a seed trains on the base's traffic
    assert live_adapters(engine)[0].name == "m-safety-v2"  # type: ignore[union-attr]  # the source is untouched
    copied.dispose()
    engine.dispose()


def test_the_spread_counts_only_runs_that_registered_an_adapter() -> None:
    rows = [{"seed": 0, "harmful refused/caution": 0.8, "Overall": 0.9},
            {"seed": 1, "harmful refused/caution": 0.6, "Overall": 0.8},
            {"seed": 2}]  # registered nothing: no held-out figures
    spread = summarise(rows)
    assert spread["harmful refused/caution"] == pytest.approx((0.7, 0.1414), abs=1e-3)
    assert "benign refused" not in spread
