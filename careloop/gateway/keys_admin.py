"""Admin routes for client keys: `GET /admin/keys`, `POST /admin/keys`, `POST /admin/keys/NAME/revoke`."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from careloop.gateway.asgi import Send, send_bytes
from careloop.gateway.errors import GatewayError, bad_request, not_found
from careloop.gateway.keys import KeyAdminError, create_key, key_dict, list_keys, parse_expiry, revoke_key
from careloop.gateway.state import GatewayState


def _limit(data: dict[str, Any], name: str) -> int | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise bad_request(f"'{name}' must be a positive integer", "invalid_type", name)
    return value


async def handle(gw: GatewayState, method: str, parts: list[str], data: dict[str, Any] | None, send: Send) -> None:
    """Serve one `/admin/keys…` request (already authorised; `data` is the parsed body of a POST)."""
    engine = gw.engine
    try:
        if method == "GET" and parts == ["keys"]:
            rows = await asyncio.to_thread(list_keys, engine)
            await send_bytes(send, 200, orjson.dumps({"object": "list", "data": [key_dict(r) for r in rows]}))
        elif method == "POST" and parts == ["keys"]:
            data = data or {}
            name = data.get("name")
            if not isinstance(name, str):
                raise bad_request("'name' (a string) is required", "invalid_type", "name")
            expires = data.get("expires")
            if expires is not None and not isinstance(expires, str):
                raise bad_request("'expires' must be a string like 90d or an ISO date", "invalid_type", "expires")
            when = parse_expiry(expires) if expires else None
            key, row = await asyncio.to_thread(create_key, engine, name, _limit(data, "rpm"), _limit(data, "tpm"),
                                               when)
            await gw.keys.reload()  # this replica knows the key at once; the others within keys.refresh_s
            await send_bytes(send, 201, orjson.dumps({"key": key, **key_dict(row)}))
        elif method == "POST" and len(parts) == 3 and parts[0] == "keys" and parts[2] == "revoke":
            row = await asyncio.to_thread(revoke_key, engine, parts[1])
            await gw.keys.reload()
            await send_bytes(send, 200, orjson.dumps(key_dict(row)))
        else:
            raise not_found(f"no admin route {method} /admin/{'/'.join(parts)}")
    except KeyAdminError as exc:
        status = 404 if str(exc).startswith("no key named") else 409 if "already exists" in str(exc) else 400
        raise GatewayError(status, str(exc), "invalid_request_error",
                           {404: "key_not_found", 409: "conflict", 400: "invalid_value"}[status]) from None
