"""Per-key rate limits across two gateway processes on one real PostgreSQL: the sum admitted holds the limit
(within 5%), whichever replica the requests reach."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from careloop.core.migrations import upgrade
from careloop.core.store import make_engine
from careloop.gateway.keys import create_key
from tests.cluster.test_replicas_postgres import _wait_ready
from tests.conftest import free_port

pytestmark = [pytest.mark.postgres]
ROOT = Path(__file__).resolve().parents[2]
WINDOW_S = 20
LIMIT = 400  # requests per window: rpm = LIMIT * 60 / WINDOW_S


def _gateway(home: Path, port: int, upstream: str, database_url: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, CARELOOP_HOME=str(home), CARELOOP_UPSTREAM=upstream, CARELOOP_DATABASE_URL=database_url,
               CARELOOP_GATEWAY__HOST="127.0.0.1", CARELOOP_GATEWAY__PORT=str(port), CARELOOP_KEYS__REQUIRE="on",
               CARELOOP_KEYS__WINDOW_S=str(WINDOW_S), CARELOOP_SAMPLE_RATE="0")
    env.pop("CARELOOP_UPSTREAM_REPLICAS", None)
    home.mkdir(parents=True, exist_ok=True)
    log = (home / "gateway.log").open("wb")
    return subprocess.Popen([sys.executable, "-m", "careloop.cli", "serve"], stdout=log, stderr=subprocess.STDOUT,
                            env=env, start_new_session=True, cwd=ROOT)


def test_two_gateways_share_one_key_limit(pg_url: str, tmp_path: Path) -> None:
    upgrade(pg_url)
    engine = make_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM rate_window"))
        conn.execute(text("DELETE FROM client_key"))
    key, _ = create_key(engine, "shared-app", rpm=LIMIT * 60 // WINDOW_S)
    stub_port = free_port()
    stub = subprocess.Popen([sys.executable, str(ROOT / "bench" / "stub_upstream.py"), "--port", str(stub_port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    ports = [free_port(), free_port()]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    procs = [_gateway(tmp_path / f"gw{i}", p, f"http://127.0.0.1:{stub_port}", pg_url) for i, p in enumerate(ports)]
    try:
        for i, (url, proc) in enumerate(zip(urls, procs, strict=True)):
            _wait_ready(url, proc, tmp_path / f"gw{i}" / "gateway.log")
        left = WINDOW_S - time.time() % WINDOW_S
        if left < 14:  # run the burst inside one window
            time.sleep(left + 0.05)
        window = int(time.time() // WINDOW_S) * WINDOW_S

        async def burst() -> Counter[tuple[int, int]]:
            sem = asyncio.Semaphore(16)
            async with httpx.AsyncClient(timeout=30, headers={"Authorization": f"Bearer {key}"}) as client:
                async def one(i: int) -> tuple[int, int]:
                    async with sem:
                        resp = await client.post(f"{urls[i % 2]}/v1/chat/completions", json={
                            "model": "assistant", "messages": [{"role": "user", "content": "hi"}]})
                        return i % 2, resp.status_code
                return Counter(await asyncio.gather(*(one(i) for i in range(2 * LIMIT))))

        codes = asyncio.run(burst())
        assert int(time.time() // WINDOW_S) * WINDOW_S == window, "the burst crossed a window boundary"
        admitted = codes[(0, 200)] + codes[(1, 200)]
        assert admitted + codes[(0, 429)] + codes[(1, 429)] == 2 * LIMIT, codes
        assert abs(admitted - LIMIT) <= 0.05 * LIMIT, codes
        assert codes[(0, 200)] > LIMIT // 4 and codes[(1, 200)] > LIMIT // 4, "both replicas served a share"
        with engine.connect() as conn:
            claimed = conn.execute(text("SELECT requests FROM rate_window WHERE key_name = 'shared-app' "
                                        "AND window_start = :w"), {"w": window}).scalar_one()
        assert claimed <= LIMIT
        print(f"admitted {admitted} of limit {LIMIT} ({codes})")
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        os.killpg(stub.pid, signal.SIGKILL)
        stub.wait(10)
        engine.dispose()
