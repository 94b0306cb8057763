"""Admin routes under `/admin/` (bearer token): adapters, promote, canary share, rollback, retrain, status.

With no `CARELOOP_ADMIN_TOKEN` set every admin route answers 404 (the API is off). Registry changes made here
are reconciled into vLLM before the response returns, so the very next request routes by them.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from careloop.core import audit_trail, registry
from careloop.core.admin_auth import admin_refusal
from careloop.core.schema import ACTIVE_RUN_STATES, Adapter, RetrainRun, TriggerEvent
from careloop.core.store import live_adapters
from careloop.gateway import keys_admin
from careloop.gateway.asgi import Receive, Scope, Send, header, read_body, send_bytes
from careloop.gateway.errors import GatewayError, bad_request, not_found
from careloop.gateway.state import GatewayState


def adapter_dict(a: Adapter) -> dict[str, Any]:
    """An adapter row as JSON."""
    return {"name": a.name, "status": a.status, "version": a.version, "base_model": a.base_model,
            "path": a.path, "parent": a.parent, "run_id": a.run_id, "canary_fraction": a.canary_fraction,
            "metrics": a.metrics, "data_counts": a.data_counts, "created_at": a.created_at.isoformat(),
            "updated_at": a.updated_at.isoformat(),
            "promoted_at": a.promoted_at.isoformat() if a.promoted_at else None}


def _authorize(gw: GatewayState, scope: Scope) -> None:
    refusal = admin_refusal(header(scope, b"authorization"), gw.settings.admin_token)
    if refusal is not None:
        raise GatewayError(*refusal)


async def _json_body(gw: GatewayState, receive: Receive) -> dict[str, Any]:
    body = await read_body(receive, gw.settings.gateway.max_body_bytes)
    if body is None:
        raise GatewayError(413, "request body too large", "invalid_request_error", "request_too_large")
    if not body.strip():
        return {}
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise bad_request("the request body is not valid JSON", "invalid_json") from None
    if not isinstance(data, dict):
        raise bad_request("the request body must be a JSON object", "invalid_type")
    return data


def _str_field(data: dict[str, Any], key: str, default: str = "") -> str:
    value = data.get(key, default)
    if not isinstance(value, str):
        raise bad_request(f"'{key}' must be a string", "invalid_type", key)
    return value


async def handle(gw: GatewayState, scope: Scope, receive: Receive, send: Send) -> None:
    """Dispatch one admin request."""
    _authorize(gw, scope)
    method, path = scope["method"], scope["path"].rstrip("/")
    parts = path.split("/")[2:]  # after "/admin"
    engine = gw.engine
    try:
        if method == "GET" and parts == ["adapters"]:
            rows = await asyncio.to_thread(registry.list_adapters, engine)
            await _reply(send, 200, {"object": "list", "data": [adapter_dict(a) for a in rows]})
        elif method == "GET" and parts == ["status"]:
            await _reply(send, 200, await _status(gw))
        elif method == "POST" and len(parts) == 3 and parts[0] == "adapters" and parts[2] == "promote":
            data = await _json_body(gw, receive)
            reason = _str_field(data, "reason", "promoted by an operator")
            row = await asyncio.to_thread(registry.promote, engine, parts[1], "operator", reason)
            await _audit(engine, "promote", row.name, reason)
            await _reply(send, 200, {"adapter": adapter_dict(row), **await _refresh(gw)})
        elif method == "POST" and len(parts) == 3 and parts[0] == "adapters" and parts[2] == "canary":
            data = await _json_body(gw, receive)
            fraction = data.get("fraction")
            if not isinstance(fraction, (int, float)) or isinstance(fraction, bool):
                raise bad_request("'fraction' (a number in [0, 1]) is required", "invalid_type", "fraction")
            reason = _str_field(data, "reason", "set by an operator")
            row = await asyncio.to_thread(registry.set_canary, engine, parts[1], float(fraction), "operator", reason)
            await _audit(engine, "canary", row.name, reason, fraction=float(fraction))
            await _reply(send, 200, {"adapter": adapter_dict(row), **await _refresh(gw)})
        elif method == "POST" and parts == ["rollback"]:
            data = await _json_body(gw, receive)
            reason = _str_field(data, "reason", "rolled back by an operator")
            name = await asyncio.to_thread(registry.rollback, engine, "operator", reason)
            if name is not None:
                await _audit(engine, "rollback", name, reason)
            await _reply(send, 200, {"rolled_back": name, **await _refresh(gw)})
        elif parts and parts[0] == "keys":  # client keys (issue 23)
            await keys_admin.handle(gw, method, parts, await _json_body(gw, receive) if method == "POST" else None,
                                    send)
        elif method == "POST" and parts == ["retrain"]:
            data = await _json_body(gw, receive)
            reason = _str_field(data, "reason", "requested by an operator")
            status, body = await asyncio.to_thread(request_retrain, engine, reason,
                                                   gw.settings.monitor.retrain_backend)
            if status == 202:
                await _audit(engine, "retrain", f"run {body['run_id']}", reason)
            await _reply(send, status, body)
        else:
            raise not_found(f"no admin route {method} {scope['path']}")
    except registry.RegistryError as exc:
        code = 404 if str(exc).startswith("no adapter named") else 409
        raise GatewayError(code, str(exc), "invalid_request_error",
                           "adapter_not_found" if code == 404 else "conflict") from None


async def _audit(engine: Engine, action: str, target: str, reason: str, **details: Any) -> None:
    """Record an admin-API action in the audit trail (the caller is the admin bearer token)."""
    actor = audit_trail.Actor(audit_trail.TOKEN_ACTOR, "admin")
    await asyncio.to_thread(audit_trail.record, engine, actor, action, target, reason, details)


async def _refresh(gw: GatewayState) -> dict[str, Any]:
    """Reconcile now so the next request routes by the change; report the routes (or why not yet)."""
    try:
        await gw.refresh_routes()
    except Exception as exc:
        return {"routes": gw.status()["routes"],
                "warning": f"recorded, but vLLM could not be reconciled yet ({exc}); retrying in the background"}
    return {"routes": gw.status()["routes"]}


def request_retrain(engine: Engine, reason: str, backend: str = "local") -> tuple[int, dict[str, Any]]:
    """Record an operator's retrain request (trigger event + `requested` run) for the monitor to start."""
    with Session(engine, expire_on_commit=False) as session:
        active = session.exec(select(RetrainRun).where(
            RetrainRun.status.in_(ACTIVE_RUN_STATES))).first()  # type: ignore[attr-defined]
        if active is not None:
            return 409, {"error": {"message": f"retrain run {active.id} is already {active.status}",
                                   "type": "invalid_request_error", "param": None, "code": "conflict"},
                         "run_id": active.id}
        stable, _ = live_adapters(engine)
        event = TriggerEvent(rule="operator", kind="manual", decision=f"retrain requested: {reason}",
                             adapter=stable.name if stable else None, figures={"reason": reason})
        session.add(event)
        session.flush()
        run = RetrainRun(status="requested", trigger_event_id=event.id, backend=backend,
                         base_adapter=stable.name if stable else None)
        session.add(run)
        session.flush()
        event.retrain_run_id = run.id
        session.add(event)
        session.commit()
        return 202, {"run_id": run.id, "status": run.status, "trigger_event_id": event.id}


async def _status(gw: GatewayState) -> dict[str, Any]:
    def registry_view() -> dict[str, Any]:
        stable, canary = live_adapters(gw.engine)
        with Session(gw.engine) as session:
            runs = session.exec(select(RetrainRun).order_by(RetrainRun.id.desc()).limit(5)).all()  # type: ignore[union-attr]
        return {"stable": stable.name if stable else None, "canary": canary.name if canary else None,
                "canary_fraction": canary.canary_fraction if canary else 0.0,
                "retrain_runs": [{"id": r.id, "status": r.status, "outcome": r.outcome,
                                  "adapter": r.adapter_name, "created_at": r.created_at.isoformat()}
                                 for r in runs]}

    out = gw.status()
    try:
        out["registry"] = await asyncio.to_thread(registry_view)
    except Exception as exc:  # the store may be down; status still answers
        out["registry"] = {"error": str(exc)}
    out["upstream_health"] = await gw.probe_upstreams()
    out["breakers_closed"] = {url: gw.upstreams.breakers.up(url) for url in gw.upstreams.urls}
    return out


async def _reply(send: Send, status: int, body: dict[str, Any]) -> None:
    await send_bytes(send, status, orjson.dumps(body))
