"""Several gateway replicas and judge workers on one real PostgreSQL: no exchange lost, none judged twice,
and one retrain at a time however many monitors try."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import string
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select
from sqlmodel import col

from careloop.core.migrations import upgrade
from careloop.core.schema import Exchange, RetrainRun, Verdict
from careloop.core.store import make_engine
from careloop.monitor.judges.base import JudgeInput, JudgeResult
from careloop.monitor.launcher import LaunchState
from careloop.monitor.supervisor import RetrainSupervisor
from careloop.monitor.worker import JudgeWorker
from tests.conftest import free_port

pytestmark = [pytest.mark.vllm, pytest.mark.postgres]
N_REQUESTS = 40


@pytest.fixture
def store(pg_url: str) -> Iterator[str]:
    """The session's PostgreSQL database, migrated, emptied of the tables this test counts."""
    upgrade(pg_url)
    engine = make_engine(pg_url)
    with engine.begin() as conn:
        for table in ("verdict", "exchange", "retrain_run", "lease"):
            conn.exec_driver_sql(f"DELETE FROM {table}")
    engine.dispose()
    yield pg_url


def _start_gateway(home: Path, port: int, upstream: str, database_url: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, CARELOOP_HOME=str(home), CARELOOP_SAMPLE_RATE="1.0", CARELOOP_UPSTREAM=upstream,
               CARELOOP_DATABASE_URL=database_url, CARELOOP_GATEWAY__HOST="127.0.0.1",
               CARELOOP_GATEWAY__PORT=str(port))
    env.pop("CARELOOP_UPSTREAM_REPLICAS", None)
    home.mkdir(parents=True, exist_ok=True)
    log = (home / "gateway.log").open("wb")
    return subprocess.Popen([sys.executable, "-m", "careloop.cli", "serve"], stdout=log, stderr=subprocess.STDOUT,
                            env=env, start_new_session=True)


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} not ready: {log.read_text(errors='replace')[-2000:]}")


class CountingJudge:
    """A judge that records every exchange it is asked to grade (a real judge's cost is not the point here)."""

    name = "count"
    version = "1"

    def __init__(self, seen: Counter[str], lock: threading.Lock) -> None:
        self.seen, self.lock = seen, lock

    async def grade(self, items: Sequence[JudgeInput]) -> list[JudgeResult | None]:
        with self.lock:
            self.seen.update(i.exchange_id for i in items)
        await asyncio.sleep(0.05)  # let the other worker claim meanwhile
        return [JudgeResult(harm_level=0, response_class="Accept") for _ in items]

    async def aclose(self) -> None:
        return None


def test_two_gateways_and_two_judge_workers_lose_nothing_and_judge_once(
    store: str, vllm_url: str, tmp_path: Path,
) -> None:
    ports = [free_port(), free_port()]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    procs = [_start_gateway(tmp_path / f"gw{i}", p, vllm_url, store) for i, p in enumerate(ports)]
    try:
        for i, (url, proc) in enumerate(zip(urls, procs, strict=True)):
            _wait_ready(url, proc, tmp_path / f"gw{i}" / "gateway.log")
        markers = ["".join(random.choices(string.ascii_lowercase, k=12)) for _ in range(N_REQUESTS)]

        async def send_all() -> list[int]:
            sem = asyncio.Semaphore(8)
            async with httpx.AsyncClient(timeout=120) as client:
                async def one(i: int) -> int:
                    async with sem:
                        resp = await client.post(f"{urls[i % 2]}/v1/chat/completions", json={
                            "model": "assistant", "max_tokens": 4,
                            "messages": [{"role": "user", "content": f"Say hi to {markers[i]}."}]})
                        return resp.status_code
                return await asyncio.gather(*(one(i) for i in range(N_REQUESTS)))

        codes = asyncio.run(send_all())
        assert codes == [200] * N_REQUESTS
        # Stop both replicas as Kubernetes does (SIGTERM): the traffic logs drain into the store.
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:  # uvicorn re-raises the signal after its graceful shutdown
            assert proc.wait(60) in (0, -signal.SIGTERM)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    engine = make_engine(store)
    with engine.connect() as conn:
        rows = [tuple(r) for r in conn.execute(select(col(Exchange.id), col(Exchange.request_messages),
                                                           col(Exchange.sampled)))]
    stored = Counter(m for _, msgs, _ in rows for m in markers if m in str(msgs))
    assert stored == Counter(markers), "every exchange stored exactly once"
    assert all(sampled for _, _, sampled in rows)

    # Two judge workers, each with its own connection pool and event loop, drain the queue together.
    seen: Counter[str] = Counter()
    lock = threading.Lock()
    workers = [JudgeWorker(make_engine(store), {"count": CountingJudge(seen, lock)}, reference="count",
                           batch_size=3) for _ in range(2)]
    threads = [threading.Thread(target=lambda w=w: asyncio.run(w.drain())) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    ids = {row[0] for row in rows}
    assert set(seen) == ids and set(seen.values()) == {1}, "each exchange graded once"
    with engine.connect() as conn:
        per_exchange = Counter(conn.execute(select(col(Verdict.exchange_id))).scalars())
        states = Counter(conn.execute(select(col(Exchange.judge_state))).scalars())
        claimers = set(conn.execute(select(col(Exchange.claimed_by))).scalars())
    assert set(per_exchange) == ids and set(per_exchange.values()) == {1}
    assert states == Counter({"done": N_REQUESTS})
    assert claimers == {w.worker_id for w in workers}, "both workers took a share"
    engine.dispose()


class RecordingLauncher:
    """A launcher that records the runs it was asked to start and reports them running."""

    backend = "test"

    def __init__(self) -> None:
        self.started: list[int] = []

    def start(self, run_id: int) -> str:
        self.started.append(run_id)
        return f"job-{run_id}"

    def poll(self, handle: str) -> LaunchState | None:
        return LaunchState(alive=True)

    def stop(self, handle: str) -> None:
        return None


def test_one_retrain_at_a_time_across_monitor_replicas(store: str) -> None:
    """Four monitor replicas race to start a retrain at the same instant: exactly one run exists."""
    launchers = [RecordingLauncher() for _ in range(4)]
    supervisors = [RetrainSupervisor(make_engine(store), launcher, holder=f"monitor-{i}", cooldown_s=0.0)
                   for i, launcher in enumerate(launchers)]
    barrier = threading.Barrier(len(supervisors))
    results: list[tuple[RetrainRun | None, str | None]] = []

    def race(sup: RetrainSupervisor) -> None:
        barrier.wait()
        results.append(sup.start())

    threads = [threading.Thread(target=race, args=(s,)) for s in supervisors]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    started = [run for run, _ in results if run is not None]
    assert len(started) == 1, results
    assert sum(len(la.started) for la in launchers) == 1
    # While it runs, every other replica is refused.
    for sup in supervisors:
        run, why = sup.start()
        assert run is None and why
    engine = make_engine(store)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(RetrainRun)).scalar_one() == 1
    engine.dispose()
