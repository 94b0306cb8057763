"""The retention benchmark at a tiny size on the real PostgreSQL: both modes expire the oldest day, the
partitioned store by dropping it, labelled rows kept, inserts counted while the purge runs."""

from __future__ import annotations

import sys

import pytest

from careloop.core.settings import REPO_ROOT
from tests.conftest import PG_ADMIN_URL

sys.path.insert(0, str(REPO_ROOT / "bench"))

from retention_bench import bench, table


@pytest.mark.postgres
def test_retention_bench_small() -> None:
    results = bench(PG_ADMIN_URL, exchanges=3000, days=3, judged=0.2, labelled=4, writers=1)
    batched, dropped = results
    assert batched["expired_day_rows"] == dropped["expired_day_rows"] == 1000
    assert batched["exchanges_deleted"] == 1000 - 4 and batched["partitions_dropped"] == 0
    assert dropped["exchanges_deleted"] == 0 and dropped["partitions_dropped"] == 2  # exchange and verdict days
    assert dropped["labelled_kept"] == 4 and dropped["upgrade_to_0006_s"] is not None
    assert all(r["inserts_per_s_before"] > 0 for r in results)
    assert "partition drop" in table(results)


@pytest.mark.postgres
def test_retention_bench_one_mode() -> None:
    (only,) = bench(PG_ADMIN_URL, exchanges=600, days=2, judged=0.2, labelled=0, writers=1, modes=("partitions",))
    assert only["mode"].startswith("partition drop") and only["partitions_dropped"] == 2
