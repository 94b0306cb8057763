"""Retention on PostgreSQL: expiring a day by dropping its partition vs. batched deletes, with inserts running.

Two stores are filled alike at revision 0005 (plain tables): N exchanges spread evenly over D days ending
yesterday, a sample of them judged, a few in the oldest day labelled by a person. One stays plain and the purge
deletes the oldest day in batches (as before revision 0006); the other is upgraded to day partitions (timed) and
the purge drops that day's partitions. Writer threads insert through the gateway's batched insert all along; the
table gives the purge time, the insert rate before and during the purge and the longest insert.

    .venv/bin/python bench/retention_bench.py                          # 200k exchanges over 10 days
    .venv/bin/python bench/retention_bench.py --exchanges 10000000 --days 30 --modes partitions
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from careloop.core.migrations import upgrade
from careloop.core.retention import purge
from careloop.core.settings import RetentionSettings
from careloop.core.store import insert_exchanges, make_engine

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
EX_COLUMNS = ("id", "created_at", "public_model", "target", "role", "request_messages", "request_params",
              "response_text", "status", "stream", "sampled", "judge_state", "key_name")
V_COLUMNS = ("exchange_id", "created_at", "adapter", "judge", "judge_version", "harm_level", "response_class",
             "score")


@contextmanager
def scratch_db(admin_url: str) -> Iterator[str]:
    """A new database on the server of `admin_url`, dropped afterwards."""
    import psycopg

    name = f"careloop_retbench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{admin_url.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def fill(url: str, exchanges: int, days: int, midnight: datetime, judged: float, labelled: int) -> int:
    """COPY `exchanges` rows over the `days` days before `midnight`, verdicts for a fraction; rows in the oldest day."""
    import psycopg

    span = days * 86400.0
    oldest = midnight - timedelta(days=days)
    expired = 0
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        with cur.copy(f"COPY exchange ({', '.join(EX_COLUMNS)}) FROM STDIN") as ex:
            for i in range(exchanges):
                created = oldest + timedelta(seconds=span * i / exchanges)
                expired += created < oldest + timedelta(days=1)
                ex.write_row((f"b{i:031d}", created, "assistant", "smollm2-135m", "stable",
                              '[{"role": "user", "content": "How should I store insulin?"}]', '{"max_tokens": 64}',
                              "Keep unopened insulin in the fridge.", 200, False, True, "done", "app"))
        rng = random.Random(0)
        with cur.copy(f"COPY verdict ({', '.join(V_COLUMNS)}) FROM STDIN") as ver:
            for i in range(exchanges):
                created = oldest + timedelta(seconds=span * i / exchanges)
                if rng.random() < judged:
                    ver.write_row((f"b{i:031d}", created + timedelta(seconds=30), "smollm2-135m", "distilled", "1",
                                   0, "Accept", 1.0))
                if i < min(labelled, expired):  # a person labels some of the oldest day, two days later
                    ver.write_row((f"b{i:031d}", created + timedelta(days=2), "smollm2-135m", "human", "nurse", 0,
                                   "Accept", 1.0))
        conn.commit()
        cur.execute("ANALYZE exchange")
        cur.execute("ANALYZE verdict")
        conn.commit()
    return expired


def run_purge(url: str, midnight: datetime, days: int, writers: int) -> dict[str, Any]:
    """Purge the oldest day while `writers` threads insert; the figures."""
    engine = make_engine(url, pool_size=writers + 2)
    stop = threading.Event()
    log: list[tuple[float, float, int]] = []  # (start, seconds, rows) of each insert
    lock = threading.Lock()

    def writer(w: int) -> None:
        i = 0
        while not stop.is_set():
            rows: list[dict[str, Any]] = [{
                     "id": f"w{w}-{i}-{k}", "created_at": datetime.now(UTC), "public_model": "assistant",
                     "target": "smollm2-135m", "role": "stable", "user_key": None, "request_messages": [],
                     "request_params": {}, "response_text": "ok", "finish_reason": "stop", "prompt_tokens": 5,
                     "completion_tokens": 3, "latency_ms": 1.0, "status": 200, "stream": False, "sampled": False,
                     "judge_state": "none", "claimed_by": None, "claimed_at": None, "request_id": None,
                     "trace_id": None, "key_name": "app", "text_purged_at": None} for k in range(50)]
            t = time.perf_counter()
            insert_exchanges(engine, rows)
            with lock:
                log.append((t, time.perf_counter() - t, len(rows)))
            i += 1

    threads = [threading.Thread(target=writer, args=(w,), daemon=True) for w in range(writers)]
    for th in threads:
        th.start()
    time.sleep(2.0)
    t0 = time.perf_counter()
    report = purge(engine, RetentionSettings(exchange_days=days - 1, raw_text_days=None, audit_days=None),
                   now=midnight)
    t1 = time.perf_counter()
    time.sleep(0.5)
    stop.set()
    for th in threads:
        th.join(30)
    engine.dispose()

    def rate(a: float, b: float) -> float:
        done = sum(n for s, d, n in log if s >= a and s + d <= b)
        return done / (b - a) if b > a else 0.0

    during = [d for s, d, _n in log if s + d >= t0 and s <= t1]
    return {"purge_s": round(t1 - t0, 3), "exchanges_deleted": report.exchanges_deleted,
            "batches": report.batches, "partitions_dropped": len(report.partitions_dropped),
            "labelled_kept": report.labelled_moved,
            "inserts_per_s_before": round(rate(t0 - 2.0, t0)), "inserts_per_s_during": round(rate(t0, t1 + 0.5)),
            "max_insert_ms_during": round(1000 * max(during, default=0.0), 1)}


MODES = {"plain": "batched delete, plain tables", "partitions": "partition drop, day partitions"}


def bench(admin_url: str, exchanges: int, days: int, judged: float, labelled: int,
          writers: int, modes: tuple[str, ...] = tuple(MODES)) -> list[dict[str, Any]]:
    """Each mode on a fresh database; one result row each."""
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    results = []
    for mode in (MODES[m] for m in modes):
        with scratch_db(admin_url) as url:
            upgrade(url, "0005")
            t = time.perf_counter()
            expired = fill(url, exchanges, days, midnight, judged, labelled)
            fill_s = time.perf_counter() - t
            upgrade_s = None
            if mode.startswith("partition"):
                t = time.perf_counter()
                upgrade(url)
                upgrade_s = round(time.perf_counter() - t, 2)
            row = {"mode": mode, "exchanges": exchanges, "days": days, "expired_day_rows": expired,
                   "fill_s": round(fill_s, 1), "upgrade_to_0006_s": upgrade_s}
            row.update(run_purge(url, midnight, days, writers))
            results.append(row)
    return results


def table(results: list[dict[str, Any]]) -> str:
    """The results as a Markdown table."""
    cols = ["mode", "expired_day_rows", "purge_s", "exchanges_deleted", "batches", "partitions_dropped",
            "labelled_kept", "inserts_per_s_before", "inserts_per_s_during", "max_insert_ms_during",
            "upgrade_to_0006_s"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join("" if r[c] is None else str(r[c]) for c in cols) + " |" for r in results]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--admin-url", default=ADMIN_URL, help="a PostgreSQL database to create scratch databases from")
    p.add_argument("--exchanges", type=int, default=200_000)
    p.add_argument("--days", type=int, default=10)
    p.add_argument("--judged", type=float, default=0.1, help="fraction of exchanges with a judge's verdict")
    p.add_argument("--labelled", type=int, default=10, help="human-labelled exchanges in the expired day")
    p.add_argument("--writers", type=int, default=2, help="threads inserting during the purge")
    p.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES),
                   help="plain: batched deletes on plain tables; partitions: dropping day partitions")
    p.add_argument("--json", type=Path, help="also write the results here")
    a = p.parse_args(argv)
    if a.days < 2:
        p.error("--days must be at least 2 (one expires, the rest stay)")
    results = bench(a.admin_url, a.exchanges, a.days, a.judged, a.labelled, a.writers, tuple(a.modes))
    print(table(results))
    if a.json:
        a.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
