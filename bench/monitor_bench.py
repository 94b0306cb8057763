"""Does history slow the monitor? Cycle time at 1k vs 1M stored verdicts, side by side.

One cycle = what the scheduler runs each tick: claim and judge a batch of new sampled exchanges (a trivial
in-process judge, so the figure is the monitor's own cost), write verdicts, follow them into the rolling windows,
refresh the queue gauge, evaluate the trigger rules. Start-up (loading the windows) is timed too.

    .venv/bin/python bench/monitor_bench.py                 # SQLite, 1k vs 1M
    .venv/bin/python bench/monitor_bench.py --sizes 1000 10000000 --database-url postgresql://postgres@127.0.0.1/test

On PostgreSQL each size gets its own scratch database on that server (created from the URL's database, dropped
afterwards) at the schema's head revision, as `careloop db upgrade` leaves a store: exchange and verdict in day
partitions, one per day of the fill's 30 days, filled by COPY.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from retention_bench import scratch_db  # bench/ is on the path when a bench script runs

from careloop.core.migrations import upgrade
from careloop.core.retention import ensure_partitions
from careloop.core.schema import Exchange, Verdict, utcnow
from careloop.core.settings import Settings
from careloop.core.store import init_db, make_engine
from careloop.monitor.judges.base import JudgeInput, JudgeResult
from careloop.monitor.loop import MonitorService
from careloop.monitor.metrics import MonitorMetrics
from careloop.monitor.scoring import RESPONSE_CLASSES, safety_score


class ConstantJudge:
    """A judge that costs nothing, so the cycle time is the monitor's own."""

    name = "distilled"
    version = "bench"

    async def grade(self, items: Sequence[JudgeInput]) -> list[JudgeResult | None]:
        return [JudgeResult(3 if "harm" in i.prompt else 0, "Accept") for i in items]

    async def aclose(self) -> None:
        return None


def fill(engine: Any, n: int, adapters: int = 4) -> None:
    """Store n judged exchanges and their verdicts (spread over the last 30 days and a few adapters)."""
    rng = random.Random(0)
    now = utcnow()
    ex_table = Exchange.metadata.tables["exchange"]
    v_table = Verdict.metadata.tables["verdict"]
    batch = 20_000
    for start in range(0, n, batch):
        exs, vs = [], []
        for k in range(start, min(n, start + batch)):
            ex_id = uuid.UUID(int=rng.getrandbits(128)).hex
            at = now - timedelta(seconds=(n - k) * 30 * 86400 / n)
            adapter = f"adapter-{k % adapters}"
            h, c = rng.randint(0, 3), rng.choice(RESPONSE_CLASSES)
            exs.append({"id": ex_id, "created_at": at, "public_model": "assistant", "target": adapter,
                        "role": "stable", "request_messages": [{"role": "user", "content": "q"}],
                        "request_params": {}, "response_text": "a", "status": 200, "stream": False,
                        "sampled": True, "judge_state": "done"})
            vs.append({"exchange_id": ex_id, "created_at": at, "adapter": adapter, "judge": "distilled",
                       "judge_version": "bench", "harm_level": h, "response_class": c, "score": safety_score(h, c)})
        with engine.begin() as conn:
            conn.execute(ex_table.insert(), exs)
            conn.execute(v_table.insert(), vs)


def copy_fill(url: str, n: int, adapters: int = 4) -> None:
    """Rows shaped like `fill`'s, into a partitioned PostgreSQL store by COPY (10 million in minutes, not hours)."""
    import psycopg

    now = utcnow()

    def rows() -> Iterator[tuple[str, datetime, str]]:
        ids = random.Random(0)  # the same ids on both passes, without holding 10 million rows
        for k in range(n):
            yield (uuid.UUID(int=ids.getrandbits(128)).hex, now - timedelta(seconds=(n - k) * 30 * 86400 / n),
                   f"adapter-{k % adapters}")

    rng = random.Random(1)
    ex_cols = ("id", "created_at", "public_model", "target", "role", "request_messages", "request_params",
               "response_text", "status", "stream", "sampled", "judge_state")
    v_cols = ("exchange_id", "created_at", "adapter", "judge", "judge_version", "harm_level", "response_class",
              "score")
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        with cur.copy(f"COPY exchange ({', '.join(ex_cols)}) FROM STDIN") as ex:
            for ex_id, at, adapter in rows():
                ex.write_row((ex_id, at, "assistant", adapter, "stable", '[{"role": "user", "content": "q"}]', "{}",
                              "a", 200, False, True, "done"))
        with cur.copy(f"COPY verdict ({', '.join(v_cols)}) FROM STDIN") as ver:
            for ex_id, at, adapter in rows():
                h, c = rng.randint(0, 3), rng.choice(RESPONSE_CLASSES)
                ver.write_row((ex_id, at, adapter, "distilled", "bench", h, c, safety_score(h, c)))
        conn.commit()
        cur.execute("ANALYZE exchange")
        cur.execute("ANALYZE verdict")
        conn.commit()


def new_traffic(engine: Any, n: int) -> None:
    """n sampled, pending exchanges as the gateway writes them."""
    ex_table = Exchange.metadata.tables["exchange"]
    rows = [{"id": uuid.uuid4().hex, "created_at": utcnow(), "public_model": "assistant", "target": "adapter-0",
             "role": "stable", "request_messages": [{"role": "user", "content": "how to harm" if k % 3 else "q"}],
             "request_params": {}, "response_text": "sure", "status": 200, "stream": False, "sampled": True,
             "judge_state": "pending"} for k in range(n)]
    with engine.begin() as conn:
        conn.execute(ex_table.insert(), rows)


async def measure(url: str, size: int, cycles: int, per_cycle: int, fill_store: bool) -> dict[str, Any]:
    """Fill a store with `size` verdicts, start the monitor on it, time `cycles` cycles."""
    home = Path(tempfile.mkdtemp(prefix="careloop-bench-"))
    settings = Settings(home=home, database_url=url)
    settings.monitor.judges = ["distilled"]
    settings.monitor.retrain_command = [sys.executable, "-c", "pass", "{run_id}"]
    engine = make_engine(url)
    postgres = url.startswith("postgresql")
    if postgres:
        upgrade(url)
        ensure_partitions(engine, now=utcnow() - timedelta(days=31), days_ahead=32)
    else:
        init_db(engine)
    t0 = time.perf_counter()
    if fill_store and postgres:
        copy_fill(url, size)
    elif fill_store:
        fill(engine, size)
    fill_s = time.perf_counter() - t0
    service = MonitorService.create(settings, engine=engine, judges={"distilled": ConstantJudge()},
                                    metrics=MonitorMetrics(), stable_adapter=lambda: "adapter-0")
    t0 = time.perf_counter()
    loaded = service.start()
    load_s = time.perf_counter() - t0
    timings: dict[str, list[float]] = {"cycle": [], "judge": [], "windows": [], "triggers": []}
    for _ in range(cycles):
        new_traffic(engine, per_cycle)
        t0 = time.perf_counter()
        await service.cycle()
        timings["cycle"].append(time.perf_counter() - t0)
        for job in ("judge", "windows", "triggers"):
            timings[job].append(service.stats[job].last_s)
    engine.dispose()
    return {"stored_verdicts": size, "fill_s": round(fill_s, 1), "startup_load_s": round(load_s, 4),
            "verdicts_loaded": loaded,
            **{f"{k}_ms_median": round(statistics.median(v) * 1000, 2) for k, v in timings.items()},
            "cycle_ms_p90": round(sorted(timings["cycle"])[int(0.9 * (len(timings["cycle"]) - 1))] * 1000, 2)}


def main() -> None:
    """Run the monitor-cycle benchmark at each store size and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 1_000_000])
    parser.add_argument("--cycles", type=int, default=30)
    parser.add_argument("--per-cycle", type=int, default=64, help="new sampled exchanges per cycle")
    parser.add_argument("--database-url", default=None,
                        help="a PostgreSQL database to create scratch databases from; default SQLite")
    parser.add_argument("--out", type=Path, default=None, help="also write the figures as JSON here")
    args = parser.parse_args()
    results = []
    for size in args.sizes:
        print(f"filling {size:,} verdicts …", flush=True)
        if args.database_url:
            with scratch_db(args.database_url) as url:
                results.append(asyncio.run(measure(url, size, args.cycles, args.per_cycle, True)))
        else:
            url = f"sqlite:///{tempfile.mkdtemp(prefix='careloop-bench-db-')}/store.db"
            results.append(asyncio.run(measure(url, size, args.cycles, args.per_cycle, True)))
        print(json.dumps(results[-1]), flush=True)
    base = results[0]
    print(f"\n{'stored verdicts':>16} {'startup s':>10} {'loaded':>8} {'cycle ms':>9} {'p90 ms':>8} "
          f"{'judge':>7} {'windows':>8} {'triggers':>9} {'x base':>7}")
    for r in results:
        print(f"{r['stored_verdicts']:>16,} {r['startup_load_s']:>10.3f} {r['verdicts_loaded']:>8} "
              f"{r['cycle_ms_median']:>9.2f} {r['cycle_ms_p90']:>8.2f} {r['judge_ms_median']:>7.2f} "
              f"{r['windows_ms_median']:>8.2f} {r['triggers_ms_median']:>9.2f} "
              f"{r['cycle_ms_median'] / base['cycle_ms_median']:>7.2f}")
    if args.out:
        args.out.write_text(json.dumps({"results": results}, indent=2))


if __name__ == "__main__":
    main()
