"""The monitor benchmark on the real PostgreSQL at a tiny size: the store is partitioned by day as
`careloop db upgrade` leaves it, the COPY fill lands in the day partitions, and the cycles run on it."""

from __future__ import annotations

import asyncio
import sys

import pytest
from sqlalchemy import text

from careloop.core.settings import REPO_ROOT
from careloop.core.store import make_engine

sys.path.insert(0, str(REPO_ROOT / "bench"))

from monitor_bench import measure


@pytest.mark.postgres
def test_monitor_bench_on_day_partitions(fresh_pg: str) -> None:
    result = asyncio.run(measure(fresh_pg, 3000, cycles=2, per_cycle=8, fill_store=True))
    engine = make_engine(fresh_pg)
    with engine.connect() as conn:
        counts = {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()
                  for t in ("exchange", "verdict", "exchange_default", "verdict_default")}
        days = conn.execute(text("SELECT count(*) FROM pg_inherits WHERE inhparent = 'exchange'::regclass"))
        partitions = days.scalar_one()
    engine.dispose()
    assert counts["exchange"] == 3000 + 2 * 8 and counts["verdict"] >= 3000
    assert counts["exchange_default"] == 0 and counts["verdict_default"] == 0  # every row in its day
    assert partitions >= 30
    assert result["stored_verdicts"] == 3000 and result["verdicts_loaded"] > 0
    assert result["cycle_ms_median"] > 0
