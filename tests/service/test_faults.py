"""Fault injection against real processes on loopback: the gateway (its own process) in front of the stub
upstream or a scripted bad one, SQLite or PostgreSQL behind it.

Every test asserts what the issue asks of each fault: no undocumented 5xx, no answered exchange lost, and no
identifier or secret at rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import psycopg
import pytest

from tests.service.procs import GatewayProc, Stub

pytestmark = pytest.mark.asyncio(loop_scope="session")

CHAT = "/v1/chat/completions"
PHI = {"name": "Margaret Okafor", "ssn": "482-19-7730", "mrn": "MRN 00917342", "phone": "(617) 555-0143"}
PROMPT = (f"I'm {PHI['name']}, {PHI['mrn']}, SSN {PHI['ssn']}, call me at {PHI['phone']}. "
          "Is 500 mg of metformin twice a day too much with an eGFR of 40?")
BODY = {"model": "assistant", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 32}
DOCUMENTED = {200, 400, 404, 408, 413, 414, 431, 499, 502, 503, 504}


@pytest.fixture
def stub() -> Iterator[Stub]:
    s = Stub()
    yield s
    s.stop()


def sqlite_ids(home: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(home / "careloop.db")) as db:
        return {r[0] for r in db.execute("SELECT id FROM exchange")}


def pg_ids(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        return {r[0] for r in conn.execute("SELECT id FROM exchange")}


def at_rest(home: Path, pg_url: str | None = None) -> bytes:
    """Every byte the gateway keeps: its home (store, spool, quarantine, WAL) and the PostgreSQL rows."""
    out = b"".join(p.read_bytes() for p in home.rglob("*") if p.is_file() and p.name != "gateway.log")
    if pg_url:
        with psycopg.connect(pg_url) as conn:
            out += "".join(str(r) for r in conn.execute("SELECT * FROM exchange")).encode()
    return out


def assert_no_phi(data: bytes) -> None:
    for value in PHI.values():
        assert value.encode() not in data, value
    assert b"Okafor" not in data and b"Margaret" not in data


async def hammer(url: str, seconds: float, conns: int = 32) -> tuple[set[str], dict[int, int]]:
    """`conns` clients sending for `seconds`; the exchange ids answered 200, and a count per status."""
    answered: set[str] = set()
    statuses: dict[int, int] = {}
    deadline = time.monotonic() + seconds

    async def one(session: aiohttp.ClientSession) -> None:
        while time.monotonic() < deadline:
            try:
                async with session.post(url + CHAT, json=BODY) as resp:
                    await resp.read()
                    statuses[resp.status] = statuses.get(resp.status, 0) + 1
                    if resp.status == 200:
                        answered.add(resp.headers["x-careloop-exchange-id"])
            except (TimeoutError, aiohttp.ClientError):
                await asyncio.sleep(0.01)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10),
                                     connector=aiohttp.TCPConnector(limit=conns)) as session:
        await asyncio.gather(*(one(session) for _ in range(conns)))
    return answered, statuses


async def kill_under_load(gw: GatewayProc, seconds: float) -> tuple[set[str], dict[int, int]]:
    """Load the gateway and SIGKILL it while requests are in flight."""
    load = asyncio.create_task(hammer(gw.url, seconds + 1.0))
    await asyncio.sleep(seconds)
    await asyncio.to_thread(gw.kill)
    return await load


async def wait_stored(ids: set[str], read: object, timeout: float = 30.0) -> set[str]:
    deadline = time.monotonic() + timeout
    missing = ids
    while time.monotonic() < deadline:
        missing = ids - read()  # type: ignore[operator]
        if not missing:
            return missing
        await asyncio.sleep(0.2)
    return missing


@pytest.fixture
def pg_db(pg_url: str) -> Iterator[str]:
    """A database of its own for one gateway, on the real PostgreSQL server."""
    name = f"careloop_fault_{uuid.uuid4().hex[:8]}"
    admin = pg_url.rsplit("/", 1)[0] + "/test"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield pg_url.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.slow
@pytest.mark.parametrize("store", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_sigkill_under_load_loses_no_answered_exchange(tmp_path: Path, stub: Stub, store: str,
                                                             request: pytest.FixtureRequest) -> None:
    home = tmp_path / "home"
    url = request.getfixturevalue("pg_db") if store == "postgres" else None
    gw = GatewayProc(home, stub.url, url)
    answered: set[str] = set()
    statuses: dict[int, int] = {}
    for _ in range(5):
        gw.start()
        got, st = await kill_under_load(gw, 1.2)
        answered |= got
        for k, v in st.items():
            statuses[k] = statuses.get(k, 0) + v
    gw.start()  # the last restart replays the last kill's WAL
    read = (lambda: pg_ids(url)) if url else (lambda: sqlite_ids(home))
    missing = await wait_stored(answered, read)
    gw.stop()
    assert len(answered) > 500 and not missing, f"{len(missing)} of {len(answered)} answered exchanges lost"
    assert set(statuses) <= DOCUMENTED, statuses
    assert_no_phi(at_rest(home, url))
