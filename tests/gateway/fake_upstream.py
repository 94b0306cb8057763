"""A scriptable fake vLLM on loopback (aiohttp.web) for the gateway's unit tests."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.conftest import free_port


@dataclass
class FakeUpstream:
    """What the fake answers, and what it was asked."""

    mode: str = "ok"  # ok | error500 | error503 | hang | cut_stream
    chunks: list[str] = field(default_factory=lambda: ["Hello", " there", "."])
    release: asyncio.Event | None = None  # when set, a stream waits for it after its first content chunk
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)  # the headers of each chat request
    cancelled: int = 0  # chat requests whose client (the gateway) went away before the answer ended
    admin_calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    loaded: set[str] = field(default_factory=set)
    roots: dict[str, str] = field(default_factory=dict)  # adapter name -> the path it was loaded from
    refuse_loads: set[str] = field(default_factory=set)  # adapter names this replica fails to load
    base_model: str = "smollm2-135m"
    port: int = 0
    runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_post("/v1/load_lora_adapter", self._load)
        app.router.add_post("/v1/unload_lora_adapter", self._unload)
        self.runner = web.AppRunner(app, shutdown_timeout=0.2, handler_cancellation=True)
        await self.runner.setup()
        self.port = self.port or free_port()  # a restarted fake keeps its port
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="")

    async def _models(self, request: web.Request) -> web.Response:
        data = [{"id": self.base_model, "object": "model"}] + [
            {"id": n, "object": "model", "parent": self.base_model, **({"root": self.roots[n]} if n in self.roots
                                                                        else {})} for n in sorted(self.loaded)]
        return web.json_response({"object": "list", "data": data})

    async def _load(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.admin_calls.append(("load", body))
        if body["lora_name"] in self.refuse_loads:
            return web.Response(status=400, text="Invalid LoRA adapter path")
        if body["lora_name"] in self.loaded:
            return web.Response(status=400, text=f"The lora adapter '{body['lora_name']}' has already been loaded.")
        self.loaded.add(body["lora_name"])
        self.roots[body["lora_name"]] = body["lora_path"]
        return web.Response(text="Success")

    async def _unload(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.admin_calls.append(("unload", body))
        self.loaded.discard(body["lora_name"])
        self.roots.pop(body["lora_name"], None)
        return web.Response(text="Success")

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._answer(request)
        except (asyncio.CancelledError, ConnectionResetError):
            self.cancelled += 1
            raise

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        req = orjson.loads(await request.read())
        self.requests.append(req)
        self.headers.append(dict(request.headers))
        model = req["model"]
        if model != self.base_model and model not in self.loaded:
            return web.json_response({"error": {"message": f"model {model} not found", "type": "NotFound",
                                                "code": 404}}, status=404)
        if self.mode == "error500":
            return web.json_response({"error": {"message": "engine dead", "type": "InternalServerError",
                                                "code": 500}}, status=500)
        if self.mode == "error503":
            return web.json_response({"error": {"message": "overloaded", "type": "ServiceUnavailable",
                                                "code": 503}}, status=503)
        if self.mode == "hang":
            await asyncio.sleep(30)
        if not req.get("stream"):
            text = "".join(self.chunks)
            return web.json_response({
                "id": "c1", "object": "chat.completion", "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 11, "completion_tokens": len(self.chunks), "total_tokens": 14}})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)

        def event(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> bytes:
            obj: dict[str, Any] = {"id": "c1", "object": "chat.completion.chunk", "model": model,
                                   "choices": choices}
            if usage:
                obj["usage"] = usage
            return b"data: " + orjson.dumps(obj) + b"\n\n"

        await resp.write(event([{"index": 0, "delta": {"role": "assistant", "content": ""}}]))
        for i, piece in enumerate(self.chunks):
            await resp.write(event([{"index": 0, "delta": {"content": piece}, "finish_reason": None}]))
            if i == 0 and self.release is not None:
                await self.release.wait()
            if i == 0 and self.mode == "cut_stream":
                assert request.transport is not None
                request.transport.close()
                return resp
        await resp.write(event([{"index": 0, "delta": {}, "finish_reason": "stop"}]))
        if (req.get("stream_options") or {}).get("include_usage"):
            await resp.write(event([], {"prompt_tokens": 11, "completion_tokens": len(self.chunks),
                                        "total_tokens": 11 + len(self.chunks)}))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp
