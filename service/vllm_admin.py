"""Talk to vLLM's adapter management and keep every replica in step with the registry.

`reconcile` is what the gateway runs every `gateway.routes_refresh_s` (and right after an admin promote or
rollback): it reads the stable and canary adapters from the registry, loads each into EVERY replica that lacks
it, and only then lets traffic go to it. Rolled-back and retired adapters are unloaded.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import orjson
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from service.routing import Routes
from service.schema import Adapter
from service.store import live_adapters

log = logging.getLogger("careloop.vllm_admin")

ADMIN_TIMEOUT = aiohttp.ClientTimeout(total=120, connect=5)


class AdapterLoadError(RuntimeError):
    """vLLM refused to load or unload an adapter."""


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


async def load_adapter(session: aiohttp.ClientSession, upstream: str, name: str, path: str,
                       api_key: str | None = None) -> None:
    """Load a LoRA adapter into one vLLM server under `name` (already loaded counts as success)."""
    async with session.post(f"{upstream.rstrip('/')}/v1/load_lora_adapter",
                            data=orjson.dumps({"lora_name": name, "lora_path": path}),
                            headers={"Content-Type": "application/json", **_headers(api_key)},
                            timeout=ADMIN_TIMEOUT) as resp:
        text = await resp.text()
        if resp.status == 200 or "already been loaded" in text:
            return
        raise AdapterLoadError(f"{upstream}: loading {name} from {path} failed ({resp.status}): {text[:500]}")


async def unload_adapter(session: aiohttp.ClientSession, upstream: str, name: str,
                         api_key: str | None = None) -> None:
    """Unload an adapter from one vLLM server (not loaded counts as success)."""
    async with session.post(f"{upstream.rstrip('/')}/v1/unload_lora_adapter",
                            data=orjson.dumps({"lora_name": name}),
                            headers={"Content-Type": "application/json", **_headers(api_key)},
                            timeout=ADMIN_TIMEOUT) as resp:
        text = await resp.text()
        if resp.status in (200, 404) or "cannot be found" in text or "not found" in text.lower():
            return
        raise AdapterLoadError(f"{upstream}: unloading {name} failed ({resp.status}): {text[:500]}")


async def loaded_models(session: aiohttp.ClientSession, upstream: str,
                        api_key: str | None = None) -> dict[str, dict[str, Any]]:
    """The models one vLLM server serves now (base and adapters), by name."""
    async with session.get(f"{upstream.rstrip('/')}/v1/models", headers=_headers(api_key),
                           timeout=aiohttp.ClientTimeout(total=10, connect=3)) as resp:
        if resp.status != 200:
            raise AdapterLoadError(f"{upstream}: GET /v1/models gave {resp.status}")
        body = orjson.loads(await resp.read())
    return {m["id"]: m for m in body.get("data", [])}


def _registry_view(engine: Engine) -> tuple[Adapter | None, Adapter | None, list[str]]:
    """Stable, canary, and the names of adapters that must not stay loaded (rolled back or retired)."""
    stable, canary = live_adapters(engine)
    with Session(engine) as session:
        dead = list(session.exec(select(Adapter.name).where(
            Adapter.status.in_(["rolled_back", "retired"]))).all())  # type: ignore[attr-defined]
    return stable, canary, dead


async def reconcile(session: aiohttp.ClientSession, engine: Engine, upstreams: list[str], base_model: str,
                    previous: Routes | None = None, api_key: str | None = None,
                    default_canary_fraction: float = 0.1) -> Routes:
    """Bring every replica in line with the registry and return the routes that are safe to serve.

    An adapter takes traffic only once it is loaded on every replica; if the new stable adapter cannot be
    loaded, the previous stable target keeps serving. The canary's share is its registry row's
    `canary_fraction`, or `default_canary_fraction` when that is 0. Raises when no replica can be reached.
    """
    stable, canary, dead = await asyncio.to_thread(_registry_view, engine)
    wanted = [a for a in (stable, canary) if a is not None]
    loaded: dict[str, list[str]] = {}
    ok_on_all: dict[str, bool] = {a.name: True for a in wanted}
    reached = 0
    for upstream in upstreams:
        try:
            models = await loaded_models(session, upstream, api_key)
        except (aiohttp.ClientError, TimeoutError, AdapterLoadError, ValueError) as exc:
            log.warning("replica %s unreachable during reconcile: %s", upstream, exc)
            for name in ok_on_all:
                ok_on_all[name] = False
            continue
        reached += 1
        for name in dead:
            if name in models:
                try:
                    await unload_adapter(session, upstream, name, api_key)
                    models.pop(name, None)
                    log.info("unloaded %s from %s", name, upstream)
                except (aiohttp.ClientError, TimeoutError, AdapterLoadError) as exc:
                    log.warning("could not unload %s from %s: %s", name, upstream, exc)
        for adapter in wanted:
            if adapter.name in models:
                continue
            try:
                await load_adapter(session, upstream, adapter.name, adapter.path, api_key)
                models[adapter.name] = {"id": adapter.name}
                log.info("loaded %s (%s) into %s", adapter.name, adapter.path, upstream)
            except (aiohttp.ClientError, TimeoutError, AdapterLoadError) as exc:
                log.error("could not load %s into %s: %s", adapter.name, upstream, exc)
                ok_on_all[adapter.name] = False
        loaded[upstream] = sorted(n for n in models if n != base_model)
    if reached == 0:
        raise AdapterLoadError("no vLLM replica reachable")

    if stable is None:
        stable_target, stable_adapter = base_model, None
    elif ok_on_all[stable.name]:
        stable_target, stable_adapter = stable.name, stable.name
    else:
        # Keep serving what served before, as long as it is not an adapter that was just rolled back.
        prev = previous.stable if previous is not None else base_model
        if prev in dead:
            prev = base_model
        stable_target, stable_adapter = prev, (None if prev == base_model else prev)
    canary_name = canary.name if canary is not None and ok_on_all[canary.name] else None
    fraction = (canary.canary_fraction or default_canary_fraction) if canary is not None else 0.0
    return Routes(stable=stable_target, stable_adapter=stable_adapter, canary=canary_name,
                  canary_fraction=fraction, known=True, loaded=loaded)
