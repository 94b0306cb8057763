"""Fault injection against real processes on loopback: the gateway (its own process) in front of the stub
upstream or a scripted bad one, SQLite or PostgreSQL behind it.

Every test asserts what the issue asks of each fault: no undocumented 5xx, no answered exchange lost, and no
identifier or secret at rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import psycopg
import pytest

from tests.gateway.procs import Forwarder, GatewayProc, Stub

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
def pg_db(fresh_pg: str) -> str:
    """A database of its own for one gateway, on the real PostgreSQL server."""
    return fresh_pg


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


class BadUpstream:
    """An OpenAI-compatible upstream that answers health and model listing, and breaks chat completions in a
    chosen way: garbage, a truncated body, a bad status line, or silence."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.port = 0
        self.server: asyncio.AbstractServer | None = None
        self.seen_auth: list[str] = []
        self.writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and drop every open connection (the upstream is down: connections are refused)."""
        if self.server is not None:
            self.server.close()
        for writer in list(self.writers):
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                    if line.lower().startswith(b"authorization:"):
                        self.seen_auth.append(line.decode())
                if length:
                    await reader.readexactly(length)
                if head.startswith(b"GET /v1/models"):
                    body = b'{"object":"list","data":[{"id":"smollm2-135m","object":"model"}]}'
                elif head.startswith(b"GET"):
                    body = b""
                else:
                    await self._break(writer)
                    return
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.writers.discard(writer)
            writer.close()

    async def _break(self, writer: asyncio.StreamWriter) -> None:
        if self.mode == "garbage":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"ZZ\r\n\x00\xff garbage\r\n")
        elif self.mode == "truncated":
            writer.write(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{"choi')
        elif self.mode == "bad_status":
            writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        elif self.mode == "slow":
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(5)
        with contextlib.suppress(ConnectionError):
            await writer.drain()


UPSTREAM_KEY = "sk-upstream-secret-7f3a9c1e5b"


@pytest.mark.parametrize(("mode", "status"), [("garbage", 502), ("truncated", 502), ("bad_status", 502),
                                              ("slow", 504), ("down", 503)])
async def test_upstream_faults_answer_documented_errors_without_secrets(tmp_path: Path, mode: str,
                                                                        status: int) -> None:
    bad = BadUpstream(mode)
    await bad.start()
    home = tmp_path / "home"
    gw = GatewayProc(home, bad.url, env={"CARELOOP_UPSTREAM_API_KEY": UPSTREAM_KEY,
                                         "CARELOOP_GATEWAY__READ_TIMEOUT_S": "1"})
    await asyncio.to_thread(gw.start)
    try:
        if mode == "down":
            await bad.stop()
            await asyncio.sleep(0.2)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
            for stream in (False, True):
                async with session.post(gw.url + CHAT, json={**BODY, "stream": stream}) as resp:
                    body = await resp.read()
                    assert resp.status in (status, 200) if stream else resp.status == status, body
                    for secret in (UPSTREAM_KEY.encode(), b"127.0.0.1", str(bad.port).encode(), b"Authorization",
                                   b"ClientResponseError", b"RequestInfo"):
                        assert secret not in body, (secret, body)
    finally:
        await asyncio.to_thread(gw.stop)
        await bad.stop()
    stored = at_rest(home)
    log = gw.log.read_bytes()
    for secret in (UPSTREAM_KEY.encode(), f"127.0.0.1:{bad.port}".encode(), b"Authorization"):
        assert secret not in stored and secret not in log, secret
    assert_no_phi(stored)
    assert len(sqlite_ids(home)) == 2  # both attempts logged, as errors


async def test_oversized_body_and_header_flood(tmp_path: Path, stub: Stub) -> None:
    gw = GatewayProc(tmp_path / "home", stub.url)
    await asyncio.to_thread(gw.start)
    try:
        async with aiohttp.ClientSession() as session:
            big = {**BODY, "messages": [{"role": "user", "content": "x" * (2 << 20)}]}
            async with session.post(gw.url + CHAT, json=big) as resp:
                assert resp.status == 413 and (await resp.json())["error"]["code"] == "request_too_large"

            async def p99(n: int = 500) -> float:
                lat = []
                for _ in range(n):
                    t0 = time.perf_counter()
                    async with session.get(gw.url + "/healthz") as r:
                        await r.read()
                    lat.append(time.perf_counter() - t0)
                lat.sort()
                return lat[int(n * 0.99) - 1]

            base = await p99()
            flood = subprocess_flood(gw.port)
            try:
                await asyncio.sleep(0.5)
                flooded = await p99()
            finally:
                flood.kill()
                flood.wait()
        # Unfixed, one flood stalled every other client for seconds (p99 3.2 s). Within 2x, or 50 ms: the flood
        # process takes a core of a 2-core box, so on a loaded machine (a training beside it) scheduling alone
        # moved the p99 from 1.8 to 9 ms; a 50 ms bound still fails the stall by two orders of magnitude.
        assert flooded <= max(2 * base, base + 0.05), f"p99 {base * 1e3:.2f} ms -> {flooded * 1e3:.2f} ms"
    finally:
        await asyncio.to_thread(gw.stop)


def subprocess_flood(port: int) -> subprocess.Popen[bytes]:
    """Another process sending 96 MB request headers over 4 connections, again and again."""
    code = f"""
import socket, threading
def flood():
    chunk = b"a" * 65536
    while True:
        try:
            s = socket.create_connection(("127.0.0.1", {port}))
            s.sendall(b"GET /healthz HTTP/1.1\\r\\nHost: x\\r\\nX-Flood: ")
            for _ in range(96 * 16):
                s.sendall(chunk)
        except OSError:
            pass
for _ in range(4):
    threading.Thread(target=flood, daemon=True).start()
threading.Event().wait()
"""
    # Niced: on this shared 2-core machine the attacker would otherwise take CPU from the clients measured,
    # which says nothing about the gateway (a real attacker is on another machine).
    return subprocess.Popen(["nice", "-n", "19", sys.executable, "-c", code], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


@pytest.mark.slow
@pytest.mark.postgres
async def test_postgres_outage_under_load_loses_nothing(tmp_path: Path, stub: Stub, pg_db: str) -> None:
    fwd = Forwarder()
    await fwd.open()
    via = pg_db.replace("127.0.0.1:5432", f"127.0.0.1:{fwd.port}")
    home = tmp_path / "home"
    gw = GatewayProc(home, stub.url, via)
    await asyncio.to_thread(gw.start)
    try:
        load = asyncio.create_task(hammer(gw.url, 4.0, conns=8))
        await asyncio.sleep(1.0)
        await fwd.close()  # PostgreSQL unreachable mid-load: the gateway spools
        await asyncio.sleep(1.5)
        await fwd.open()  # back: the spool replays
        answered, statuses = await load
        missing = await wait_stored(answered, lambda: pg_ids(pg_db), 40)
    finally:
        await asyncio.to_thread(gw.stop)
        await fwd.close()
    assert answered and not missing, f"{len(missing)} of {len(answered)} lost"
    assert set(statuses) == {200}, statuses
    assert b"spool" in gw.log.read_bytes()
    assert_no_phi(at_rest(home, pg_db))


async def test_unwritable_sqlite_spools_then_replays(tmp_path: Path, stub: Stub) -> None:
    home = tmp_path / "home"
    db = home / "careloop.db"
    gw = GatewayProc(home, stub.url)
    await asyncio.to_thread(gw.start)  # creates the store
    await asyncio.to_thread(gw.stop)
    readonly = GatewayProc(home, stub.url, f"sqlite:///file:{db}?mode=ro&uri=true")
    readonly.port = gw.port
    await asyncio.to_thread(readonly.start)
    try:
        answered, statuses = await hammer(readonly.url, 1.5, conns=4)
        await asyncio.sleep(0.5)
    finally:
        await asyncio.to_thread(readonly.stop)
    assert answered and set(statuses) == {200}
    assert list((home / "spool").glob("exchanges-*.jsonl")) and not answered & sqlite_ids(home)
    await asyncio.to_thread(gw.start)  # writable again: the spool replays at the first write
    async with aiohttp.ClientSession() as session, session.post(gw.url + CHAT, json=BODY) as resp:
        assert resp.status == 200
    missing = await wait_stored(answered, lambda: sqlite_ids(home), 20)
    await asyncio.to_thread(gw.stop)
    assert not missing and not list((home / "spool").glob("exchanges-*.jsonl"))
    assert_no_phi(at_rest(home))


@pytest.mark.postgres
async def test_poison_request_is_quarantined_and_strands_nothing(tmp_path: Path, stub: Stub, pg_db: str) -> None:
    home = tmp_path / "home"
    token = "admin-token-0123456789abcdef"
    gw = GatewayProc(home, stub.url, pg_db, env={"CARELOOP_ADMIN_TOKEN": token,
                                                 "CARELOOP_GATEWAY__LOG_FLUSH_INTERVAL_S": "0.5"})
    await asyncio.to_thread(gw.start)
    try:
        async with aiohttp.ClientSession() as session:
            answered = set()
            for i in range(300):
                body = {**BODY, "model": "gpt\u0000x"} if i % 100 == 50 else BODY
                async with session.post(gw.url + CHAT, json=body) as resp:
                    if resp.status == 200:
                        answered.add(resp.headers["x-careloop-exchange-id"])
                    else:
                        assert resp.status == 404
            missing = await wait_stored(answered, lambda: pg_ids(pg_db), 20)
            async with session.get(gw.url + "/admin/status",
                                   headers={"Authorization": f"Bearer {token}"}) as resp:
                status = (await resp.json())["traffic_log"]
            async with session.get(gw.url + "/metrics") as resp:
                metrics = await resp.text()
    finally:
        await asyncio.to_thread(gw.stop)
    assert len(answered) == 297 and not missing
    assert status["quarantined"] == 3 and status["store_ok"]
    assert "careloop_traffic_quarantined_total 3.0" in metrics
    lines = [json.loads(line) for p in (home / "quarantine").glob("rows-*.jsonl")
             for line in p.read_text().splitlines()]
    assert len(lines) == 3 and all("NUL" in q["reason"] for q in lines)
    assert_no_phi(at_rest(home, pg_db))


@pytest.mark.slow
async def test_sigterm_under_load_loses_nothing(tmp_path: Path, stub: Stub) -> None:
    home = tmp_path / "home"
    gw = GatewayProc(home, stub.url)
    await asyncio.to_thread(gw.start)
    load = asyncio.create_task(hammer(gw.url, 2.5))
    await asyncio.sleep(1.5)
    # uvicorn shuts down gracefully, then re-raises the signal it caught: -15 after a clean stop.
    assert await asyncio.to_thread(gw.stop) in (0, -15)
    answered, statuses = await load
    assert b"gateway stopped" in gw.log.read_bytes()
    assert answered and answered <= sqlite_ids(home)  # stored before the process exited
    assert set(statuses) <= DOCUMENTED
    assert not any((home / "wal").iterdir())  # drained: nothing left to replay
    for path in home.rglob("*"):  # `home` itself was made by the test
        if path.name == "gateway.log":  # the test's own capture of the process output
            continue
        mode = path.stat().st_mode & 0o777
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))
