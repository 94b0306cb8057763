"""A zero-latency OpenAI-compatible stub on raw asyncio + httptools: the upstream for gateway benchmarks.

`POST /v1/chat/completions` answers a fixed completion at once, or (with `"stream": true`) an SSE stream of
`--chunks` content deltas `--chunk-delay` seconds apart, plus a usage event when `stream_options.include_usage`
is set, then `[DONE]`. With `--echo` the reply also quotes the last user message, so that every reply to a fresh
prompt is fresh text too (as a model's replies are). `GET /v1/models`, `GET /health` and the LoRA admin routes
answer too.

    python bench/stub_upstream.py --port 9100 [--chunks 16 --chunk-delay 0.05]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import httptools
import orjson

MODEL = "smollm2-135m"


REPLY = "Please talk to your doctor or pharmacist before changing the dose."


def _echo(req: dict) -> str:
    """A reply quoting the request's last user message (`--echo`)."""
    users = [m.get("content") for m in req.get("messages") or () if isinstance(m, dict) and m.get("role") == "user"]
    last = users[-1] if users and isinstance(users[-1], str) else ""
    return f"You asked: \"{last}\". {REPLY}"


def _completion(model: str, content: str = REPLY) -> bytes:
    return orjson.dumps({
        "id": "chatcmpl-stub", "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 21, "completion_tokens": 13, "total_tokens": 34},
    })


def _chunk(model: str, delta: dict, finish: str | None = None) -> bytes:
    return b"data: " + orjson.dumps({
        "id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": 0, "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }) + b"\n\n"


class StubProtocol(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, chunks: int, chunk_delay: float, echo: bool = False) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.chunks, self.chunk_delay, self.echo = chunks, chunk_delay, echo
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_message_begin(self) -> None:
        self.url, self.body = b"", []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        path = self.url.split(b"?", 1)[0]
        if method == b"POST" and path == b"/v1/chat/completions":
            try:
                req = orjson.loads(b"".join(self.body))
            except orjson.JSONDecodeError:
                self._send(400, b'{"error":{"message":"bad json","type":"invalid_request_error","code":400}}')
                return
            model = req.get("model", MODEL)
            echoed = _echo(req) if self.echo else None
            if req.get("stream"):
                usage = bool((req.get("stream_options") or {}).get("include_usage"))
                asyncio.get_running_loop().create_task(self._stream(model, usage, echoed))
            else:
                self._send(200, _completion(model, echoed or REPLY))
        elif path == b"/v1/models":
            self._send(200, orjson.dumps({"object": "list", "data": [{"id": MODEL, "object": "model"}]}))
        elif path == b"/health":
            self._send(200, b"")
        elif path in (b"/v1/load_lora_adapter", b"/v1/unload_lora_adapter"):
            self._send(200, b"Success")
        else:
            self._send(404, b'{"error":{"message":"not found","type":"invalid_request_error","code":404}}')

    def _send(self, status: int, body: bytes, ctype: bytes = b"application/json") -> None:
        assert self.transport is not None
        reason = b"OK" if status == 200 else b"ERR"
        self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s"
                             % (status, reason, ctype, len(body), body))

    async def _stream(self, model: str, usage: bool, echoed: str | None = None) -> None:
        t = self.transport
        assert t is not None
        t.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")

        def write(data: bytes) -> None:
            t.write(b"%x\r\n%s\r\n" % (len(data), data))

        write(_chunk(model, {"role": "assistant", "content": echoed or ""}))
        for i in range(self.chunks):
            if self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
            if t.is_closing():
                return
            write(_chunk(model, {"content": f" tok{i}"}))
        write(_chunk(model, {}, "stop"))
        if usage:
            write(b"data: " + orjson.dumps({"id": "chatcmpl-stub", "object": "chat.completion.chunk",
                                             "created": 0, "model": model, "choices": [],
                                             "usage": {"prompt_tokens": 21, "completion_tokens": self.chunks,
                                                       "total_tokens": 21 + self.chunks}}) + b"\n\n")
        write(b"data: [DONE]\n\n")
        t.write(b"0\r\n\r\n")


async def serve(port: int, chunks: int, chunk_delay: float, host: str = "127.0.0.1",
                echo: bool = False) -> asyncio.Server:
    """Start the stub on the running loop."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: StubProtocol(chunks, chunk_delay, echo), host, port, backlog=4096)


def main() -> None:
    """Run the stub until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--chunks", type=int, default=16)
    parser.add_argument("--chunk-delay", type=float, default=0.0)
    parser.add_argument("--echo", action="store_true", help="quote the last user message in every reply")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    async def run() -> None:
        server = await serve(args.port, args.chunks, args.chunk_delay, echo=args.echo)
        async with server:
            await server.serve_forever()

    asyncio.run(run())


if __name__ == "__main__":
    main()
