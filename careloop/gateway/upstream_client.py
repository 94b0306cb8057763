"""The hot path's HTTP/1.1 client to vLLM: kept-alive connections on asyncio protocols, parsed by httptools.

The gateway sends one kind of request upstream on its hot path (`POST` of a JSON body it already holds as bytes)
and relays the answer without parsing it, so it needs none of a general client's machinery (URL objects, header
multidicts, cookie jars, redirects, tracing hooks, per-request timers). aiohttp's client spent ~0.3 ms of CPU per
request doing that on a 2-core machine; this client writes the request in one `write` and hands the body over as
llhttp (the parser uvicorn uses) delivers it. Health probes and admin calls stay on aiohttp.

Failures come back as one of four exceptions, which is all the gateway decides on: `ConnectFailed` (nothing
reached the replica: refused, unreachable, connect timeout), `Disconnected` (the connection closed before the
response ended), `BadResponse` (not HTTP), `ReadTimeout` (nothing arrived within the read timeout).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from urllib.parse import urlsplit

import httptools

_HIGH_WATER = 256 * 1024  # bytes buffered from vLLM before reading pauses (a slow client)
KEEPALIVE_S = 4.0  # idle connections older than this are not reused: below uvicorn's default keep-alive (5 s)


class UpstreamError(Exception):
    """The request to vLLM failed; the subclass says how."""

    kind = "protocol error"


class ConnectFailed(UpstreamError):
    """No connection to the replica (refused, unreachable, or no handshake within the connect timeout)."""

    kind = "connection error"

    def __init__(self, message: str, refused: bool) -> None:
        super().__init__(message)
        self.refused = refused


class Disconnected(UpstreamError):
    """The connection closed before the response ended (`before_response`: before any byte of it)."""

    def __init__(self, before_response: bool) -> None:
        super().__init__("connection closed" if before_response else "truncated body")
        self.before_response = before_response
        self.kind = "connection closed" if before_response else "truncated body"


class BadResponse(UpstreamError):
    """The replica answered something that is not an HTTP/1.1 response."""

    kind = "malformed response"


class ReadTimeout(UpstreamError, TimeoutError):
    """Nothing arrived from the replica within the read timeout."""

    kind = "read timeout"


class UpstreamResponse:
    """One response from vLLM: status and content type at once, the body as it arrives."""

    __slots__ = ("_buffered", "_complete", "_conn", "_error", "_parts", "_waiter", "content_type", "status")

    def __init__(self, conn: _Connection, status: int, content_type: bytes) -> None:
        self.status = status
        self.content_type = content_type
        self._conn = conn
        self._parts: list[bytes] = []
        self._buffered = 0
        self._complete = False
        self._error: UpstreamError | None = None
        self._waiter: asyncio.Future[None] | None = None

    async def read(self) -> bytes:
        """The whole body."""
        while not self._complete:
            await self._wait()
        if self._error is not None:
            raise self._error
        return b"".join(self._parts)

    async def chunk(self) -> bytes | None:
        """What arrived since the last call (waiting for something), or None once the body has ended."""
        while not self._parts:
            if self._complete:
                if self._error is not None:
                    raise self._error
                return None
            await self._wait()
        parts = self._parts
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        parts.clear()
        if self._buffered > _HIGH_WATER:
            self._conn.resume()
        self._buffered = 0
        return data

    def release(self) -> None:
        """Done with the response: its connection goes back to the pool if the body ended cleanly."""
        self._conn.finish(reuse=self._complete and self._error is None)

    def close(self) -> None:
        """Drop the connection (vLLM stops generating for a request whose connection closes)."""
        self._conn.finish(reuse=False)

    async def _wait(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _feed(self, data: bytes) -> None:
        self._parts.append(data)
        self._buffered += len(data)
        if self._buffered > _HIGH_WATER:
            self._conn.pause()
        self._wake()

    def _end(self, error: UpstreamError | None) -> None:
        if not self._complete:
            self._complete, self._error = True, error
            self._wake()


class _Connection(asyncio.Protocol):
    """One kept-alive connection to a replica; at most one request on it at a time."""

    def __init__(self, pool: ReplicaPool) -> None:
        self.pool = pool
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.head: asyncio.Future[UpstreamResponse] | None = None
        self.response: UpstreamResponse | None = None
        self.content_type = b"application/json"
        self.until_close = True  # neither a length nor chunked: the body ends when the connection does
        self.keep_alive = True
        self.open = False
        self.idle_since = 0.0
        self.last_data = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.paused = False
        self.slot: asyncio.Semaphore | None = None  # the client's request slot this connection's request holds

    # Protocol callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.open = True

    def data_received(self, data: bytes) -> None:
        if self.head is None:  # bytes on an idle connection: not HTTP/1.1 as this client speaks it
            self.close()
            return
        self.last_data = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._fail(BadResponse("malformed response"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self._cancel_timer()
        self.pool.forget(self)
        if self.head is not None and not self.head.done():
            self.head.set_exception(Disconnected(before_response=True))
        elif self.response is not None:
            self.response._end(None if self.until_close else Disconnected(before_response=False))

    def pause_writing(self) -> None:  # a request body never outgrows the socket buffer enough to matter
        pass

    def resume_writing(self) -> None:
        pass

    # httptools callbacks

    def on_message_begin(self) -> None:
        self.content_type = b"application/json"
        self.until_close = True

    def on_header(self, name: bytes, value: bytes) -> None:
        lname = name.lower()
        if lname == b"content-type":
            self.content_type = value
        elif lname in (b"content-length", b"transfer-encoding"):
            self.until_close = False

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:  # an interim response (100 Continue): the real one follows
            return
        self.keep_alive = self.parser.should_keep_alive()
        self.response = UpstreamResponse(self, status, self.content_type)
        if self.head is not None and not self.head.done():
            self.head.set_result(self.response)

    def on_body(self, body: bytes) -> None:
        if self.response is not None:
            self.response._feed(body)

    def on_message_complete(self) -> None:
        if self.response is not None:
            self._cancel_timer()
            self.response._end(None)

    # Used by the pool and the response

    def send(self, data: bytes, read_timeout_s: float) -> asyncio.Future[UpstreamResponse]:
        """Write one request; the future resolves with the response once its head has arrived."""
        assert self.transport is not None
        self.head = self.loop.create_future()
        self.response = None
        self.last_data = self.loop.time()
        self.timer = self.loop.call_at(self.last_data + read_timeout_s, self._check_timeout, read_timeout_s)
        self.transport.write(data)
        return self.head

    def finish(self, reuse: bool) -> None:
        """The request is over: its slot freed, the connection back to the pool or closed."""
        self._cancel_timer()
        if self.slot is not None:
            self.slot.release()
            self.slot = None
        response, self.response, self.head = self.response, None, None
        if reuse and self.open and self.keep_alive and not self.paused and response is not None:
            self.pool.put_back(self)
        else:
            self.close()

    def close(self) -> None:
        """Close the connection (once)."""
        if self.transport is not None and self.open:
            self.open = False
            self.transport.close()
        self.pool.forget(self)

    def pause(self) -> None:
        if not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()

    def _check_timeout(self, read_timeout_s: float) -> None:
        due = self.last_data + read_timeout_s
        if self.paused or self.loop.time() < due:  # data came meanwhile, or the client is the slow one
            self.timer = self.loop.call_at(max(due, self.loop.time() + 0.05), self._check_timeout, read_timeout_s)
            return
        self.timer = None
        self._fail(ReadTimeout("the model server sent nothing within the read timeout"))

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _fail(self, error: UpstreamError) -> None:
        self._cancel_timer()
        if self.head is not None and not self.head.done():
            self.head.set_exception(error)
        elif self.response is not None:
            self.response._end(error)
        if self.transport is not None:
            self.open = False
            self.transport.close()


class ReplicaPool:
    """Kept-alive connections to one replica (`http://host:port[/prefix]` or https)."""

    def __init__(self, client: UpstreamClient, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"an upstream URL must be http(s)://host[:port]: {url!r}")
        self.client = client
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl: ssl.SSLContext | None = ssl.create_default_context() if parts.scheme == "https" else None
        self.prefix = parts.path.rstrip("/").encode("latin-1")
        host_header = parts.netloc.rsplit("@", 1)[-1]
        self.host_line = b"Host: " + host_header.encode("idna") + b"\r\n"
        self.idle: list[_Connection] = []

    async def connection(self) -> _Connection:
        """An open connection: the newest idle one, else a new one."""
        now = time.monotonic()
        while self.idle:
            conn = self.idle.pop()
            if conn.open and now - conn.idle_since < KEEPALIVE_S:
                return conn
            conn.close()
        try:
            _, conn = await asyncio.wait_for(
                asyncio.get_running_loop().create_connection(lambda: _Connection(self), self.host, self.port,
                                                             ssl=self.ssl),
                self.client.connect_timeout_s)
        except TimeoutError:
            raise ConnectFailed("no connection within the connect timeout", refused=False) from None
        except OSError as exc:
            raise ConnectFailed(f"connection failed ({type(exc).__name__})", refused=True) from None
        return conn

    def put_back(self, conn: _Connection) -> None:
        """An idle connection, ready for the next request."""
        conn.idle_since = time.monotonic()
        self.idle.append(conn)

    def forget(self, conn: _Connection) -> None:
        """A connection that closed is no longer idle here."""
        if conn in self.idle:
            self.idle.remove(conn)

    def close(self) -> None:
        """Close every idle connection."""
        for conn in list(self.idle):
            conn.close()
        self.idle.clear()


class UpstreamClient:
    """Connection pools to the replicas, one per URL, under one cap on open connections."""

    def __init__(self, urls: list[str], connect_timeout_s: float, read_timeout_s: float, pool_size: int) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.slots = asyncio.Semaphore(pool_size)  # requests in flight at most (idle connections do not count)
        self.pools = {url: ReplicaPool(self, url) for url in urls}

    async def post(self, url: str, path: bytes, headers: bytes, body: bytes) -> UpstreamResponse:
        """POST `body` to `url + path` with `headers` (whole `Name: value\\r\\n` lines); the response once its head
        has arrived. The caller must `release()` or `close()` it."""
        pool = self.pools[url]
        slots = self.slots
        await slots.acquire()
        try:
            conn = await pool.connection()
        except BaseException:
            slots.release()
            raise
        conn.slot = slots
        data = b"".join((b"POST ", pool.prefix, path, b" HTTP/1.1\r\n", pool.host_line, headers,
                         b"Content-Length: ", str(len(body)).encode(), b"\r\n\r\n", body))
        try:
            return await conn.send(data, self.read_timeout_s)
        except BaseException:
            conn.finish(reuse=False)
            raise

    def close(self) -> None:
        """Close every idle connection (requests in flight close theirs when they end)."""
        for pool in self.pools.values():
            pool.close()
