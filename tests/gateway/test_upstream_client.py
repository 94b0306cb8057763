"""The hot path's upstream client against a raw TCP server that answers exactly what each test scripts."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from careloop.gateway.upstream_client import BadResponse, ConnectFailed, Disconnected, ReadTimeout, UpstreamClient

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
MakeClient = Callable[..., UpstreamClient]
OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


class Server:
    """A loopback server running `handler` per connection; counts connections and requests."""

    def __init__(self, handler: Handler | None = None) -> None:
        self.handler = handler or self.answer_ok
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.url = ""

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def answer_ok(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """The default: answer every request on the connection with a small JSON body."""
        while True:
            await self.read_request(reader)
            writer.write(OK)

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        """One request (head and body) from the connection."""
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        request = head + await reader.readexactly(length)
        self.requests.append(request)
        return request


@pytest.fixture
async def client() -> AsyncIterator[MakeClient]:
    """A maker of clients to one URL (read timeout and pool size as given), closed after the test."""
    made: list[UpstreamClient] = []

    def make(url: str, read_timeout_s: float = 5.0, pool_size: int = 8) -> UpstreamClient:
        made.append(UpstreamClient([url], 1.0, read_timeout_s, pool_size))
        return made[-1]

    yield make
    for c in made:
        c.close()


async def test_a_kept_alive_connection_serves_one_request_after_another(client: MakeClient) -> None:
    async with Server() as srv:
        c = client(srv.url)
        for i in range(3):
            resp = await c.post(srv.url, b"/v1/chat/completions", b"X-Request-ID: r%d\r\n" % i, b'{"a":1}')
            assert (resp.status, resp.content_type, await resp.read()) == (200, b"application/json", b"{}")
            resp.release()
    assert srv.connections == 1 and len(srv.requests) == 3
    first = srv.requests[0]
    assert first.startswith(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"X-Request-ID: r0\r\n" in first and b"Content-Length: 7\r\n" in first and first.endswith(b'{"a":1}')


async def test_a_chunked_stream_arrives_before_it_ends_and_a_closed_response_is_not_reused(client: MakeClient) -> None:
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await srv.read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
                         b"7\r\ndata: a\r\n")
            await release.wait()
            writer.write(b"7\r\ndata: b\r\n0\r\n\r\n")

    async with Server(handler) as srv:
        c = client(srv.url)
        resp = await c.post(srv.url, b"/v1/chat/completions", b"", b"{}")
        assert resp.content_type == b"text/event-stream"
        assert await resp.chunk() == b"data: a"  # before the server sends the rest
        release.set()
        assert await resp.chunk() == b"data: b"
        assert await resp.chunk() is None
        resp.close()  # a client that left: the connection goes, it is not pooled
        resp = await c.post(srv.url, b"/v1/chat/completions", b"", b"{}")
        assert (await resp.chunk() or b"").startswith(b"data: a")
        resp.close()
    assert srv.connections == 2


async def test_failures_come_back_as_the_four_kinds(client: MakeClient) -> None:
    async def close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await srv.read_request(reader)

    async def truncated(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await srv.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"partial\"")
        await writer.drain()

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await srv.read_request(reader)
        writer.write(b"ZZ\r\n\x00\xff garbage\r\n\r\n")
        await asyncio.sleep(1)

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await srv.read_request(reader)
        await asyncio.sleep(5)

    async with Server(close_at_once) as srv:
        with pytest.raises(Disconnected) as dropped:
            await client(srv.url).post(srv.url, b"/x", b"", b"{}")
        assert dropped.value.before_response
    async with Server(truncated) as srv:
        resp = await client(srv.url).post(srv.url, b"/x", b"", b"{}")
        with pytest.raises(Disconnected) as cut:
            await resp.read()
        assert not cut.value.before_response and cut.value.kind == "truncated body"
        resp.close()
    async with Server(garbage) as srv:
        with pytest.raises(BadResponse):
            await client(srv.url).post(srv.url, b"/x", b"", b"{}")
    async with Server(silent) as srv:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(ReadTimeout):
            await client(srv.url, read_timeout_s=0.3).post(srv.url, b"/x", b"", b"{}")
        assert 0.25 < loop.time() - t0 < 1.5
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(ConnectFailed) as refused:
        await client(url).post(url, b"/x", b"", b"{}")
    assert refused.value.refused


async def test_a_body_that_ends_with_the_connection_is_complete(client: MakeClient) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await srv.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nall of it")
        await writer.drain()

    async with Server(handler) as srv:
        resp = await client(srv.url).post(srv.url, b"/x", b"", b"{}")
        assert await resp.read() == b"all of it"
        resp.release()


async def test_pool_size_caps_requests_in_flight(client: MakeClient) -> None:
    async with Server() as srv:
        c = client(srv.url, pool_size=1)
        first = await c.post(srv.url, b"/x", b"", b"{}")
        second = asyncio.ensure_future(c.post(srv.url, b"/x", b"", b"{}"))
        await asyncio.sleep(0.2)
        assert not second.done() and len(srv.requests) == 1  # waits for the slot
        await first.read()
        first.release()
        resp = await asyncio.wait_for(second, 2)
        assert await resp.read() == b"{}"
        resp.release()
    assert srv.connections == 1


async def test_a_slow_reader_pauses_the_upstream_and_still_gets_every_byte(client: MakeClient) -> None:
    size = 4 << 20

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await srv.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size)
        for _ in range(size // 65536):
            writer.write(b"x" * 65536)
            await writer.drain()

    async with Server(handler) as srv:
        resp = await client(srv.url).post(srv.url, b"/x", b"", b"{}")
        await asyncio.sleep(0.3)  # the server keeps sending; the client must stop reading
        got, largest = 0, 0
        while (data := await resp.chunk()) is not None:
            got += len(data)
            largest = max(largest, len(data))
        assert got == size and largest < 2 << 20  # never the whole body buffered at once
        resp.release()
