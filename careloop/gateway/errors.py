"""OpenAI-style error bodies and the raw ASGI responses that carry them."""

from __future__ import annotations

from typing import Any

import orjson

from careloop.gateway.asgi import Send, send_bytes


class GatewayError(Exception):
    """An error the gateway answers with an OpenAI error body."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param

    def body(self) -> bytes:
        """The JSON body: `{"error": {"message", "type", "code", "param"}}`."""
        return error_body(self.message, self.type, self.code, self.param)


def error_body(message: str, type_: str, code: str | None, param: str | None = None) -> bytes:
    """An OpenAI error body."""
    err: dict[str, Any] = {"message": message, "type": type_, "param": param, "code": code}
    return orjson.dumps({"error": err})


async def send_error(send: Send, exc: GatewayError, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """Answer with the error's status and body."""
    await send_bytes(send, exc.status, exc.body(), headers=headers)


def bad_request(message: str, code: str = "invalid_request", param: str | None = None) -> GatewayError:
    """400 for a request the gateway cannot accept."""
    return GatewayError(400, message, "invalid_request_error", code, param)


def not_found(message: str, code: str = "not_found") -> GatewayError:
    """404 for an unknown route or model."""
    return GatewayError(404, message, "invalid_request_error", code)


def upstream_error(status: int, message: str, code: str) -> GatewayError:
    """502/503/504 for an upstream that is down, slow or broken."""
    return GatewayError(status, message, "upstream_error", code)
