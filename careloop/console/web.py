"""The console's web plumbing: security headers on every response, refusals, form bodies, safe redirects."""

from __future__ import annotations

import json
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_FORM_BYTES = 64 * 1024
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def local_path(path: str | None) -> str:
    """Where to go after signing in: a path on this console only (never another site), else the review queue."""
    if path and path.startswith("/") and not path.startswith(("//", "/\\")) and "\\" not in path:
        return path
    return "/review"


class SecurityHeaders:
    """Adds CSP, no framing, no sniffing, no referrer and no caching of pages to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Wrap `send` to add the headers."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope["path"].startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(b"content-security-policy", CSP.encode()), (b"x-frame-options", b"DENY"),
                            (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]
                if not static:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


class Denied(Exception):
    """A request refused with a status and a message (rendered as a page, or JSON for the bearer token)."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


async def read_form(request: Request) -> dict[str, str]:
    """The POST body as fields: url-encoded form or a JSON object."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise Denied(413, "request body too large", "request_too_large")
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            data = json.loads(body or b"{}")
        except ValueError:
            raise Denied(400, "the request body is not valid JSON", "invalid_json") from None
        if not isinstance(data, dict):
            raise Denied(400, "the request body must be a JSON object", "invalid_type")
        return {str(k): "" if v is None else str(v) for k, v in data.items()}
    try:
        return dict(parse_qsl(body.decode(), keep_blank_values=True))
    except UnicodeDecodeError:
        raise Denied(400, "the form is not UTF-8", "invalid_form") from None


def wants_json(request: Request, by_token: bool) -> bool:
    """Whether a refusal goes back as JSON: the bearer token's calls, JSON callers, any Authorization header."""
    return by_token or "application/json" in request.headers.get("accept", "") \
        or bool(request.headers.get("authorization"))


def json_refusal(exc: Denied) -> JSONResponse:
    """A refusal as an OpenAI-style error body."""
    kind = "invalid_request_error" if exc.status < 500 else "server_error"
    return JSONResponse({"error": {"message": exc.message, "type": kind, "code": exc.code, "param": None}},
                        status_code=exc.status)
