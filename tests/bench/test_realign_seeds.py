"""bench/realign_seeds.py: every seed runs on its own copy of the same store; the spread is over the runs."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import pytest

from careloop.core.settings import REPO_ROOT, Settings

sys.path.insert(0, str(REPO_ROOT / "bench"))

from realign_seeds import seeded_home, summarise


def test_each_seed_gets_a_copy_of_the_traffic_and_the_source_models(settings: Settings, tmp_path: Path) -> None:
    db = Path((settings.database_url or "").removeprefix("sqlite:///"))
    with sqlite3.connect(db) as conn:
        conn.execute("create table exchange (id text)")
        conn.execute("insert into exchange values ('x1')")
    (settings.models_dir / "marker").write_text("model")
    one, two = seeded_home(settings, 1, tmp_path / "runs"), seeded_home(settings, 2, tmp_path / "runs")
    assert (one.retrain.seed, two.retrain.seed) == (1, 2) and settings.retrain.seed == 0
    for s in (one, two):
        copy = Path((s.database_url or "").removeprefix("sqlite:///"))
        assert copy != db and copy.is_file()
        with sqlite3.connect(copy) as conn:
            assert conn.execute("select id from exchange").fetchall() == [("x1",)]
        assert (s.models_dir / "marker").read_text() == "model"
    with sqlite3.connect(Path((one.database_url or "").removeprefix("sqlite:///"))) as conn:
        conn.execute("insert into exchange values ('only-in-one')")
    with sqlite3.connect(db) as conn:
        assert conn.execute("select count(*) from exchange").fetchone() == (1,)  # the source is untouched


def test_the_spread_counts_only_runs_that_registered_an_adapter() -> None:
    rows = [{"seed": 0, "harmful refused/caution": 0.8, "Overall": 0.9},
            {"seed": 1, "harmful refused/caution": 0.6, "Overall": 0.8},
            {"seed": 2}]  # registered nothing: no held-out figures
    spread = summarise(rows)
    assert spread["harmful refused/caution"] == pytest.approx((0.7, 0.1414), abs=1e-3)
    assert "benign refused" not in spread
