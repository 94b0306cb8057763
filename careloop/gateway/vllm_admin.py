"""Talk to vLLM's adapter management and keep every replica in step with the registry.

`reconcile` is what the gateway runs every `gateway.routes_refresh_s` (and right after an admin promote or
rollback): given the registry's stable and canary adapters (`read_registry`), it loads each into every replica
that lacks it, and only then lets traffic go to it. Rolled-back and retired adapters are unloaded.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import aiohttp
import orjson
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from careloop.core.schema import DEAD_ADAPTER_STATES, Adapter
from careloop.core.store import live_adapters
from careloop.gateway.routing import Routes

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


@dataclass(frozen=True)
class RegistryView:
    """What the registry says should serve: (name, path) of the stable and canary adapters, and the adapters
    that must not stay loaded. Plain data, so the gateway can keep the last one it read (and cache it on
    disk) to keep serving the right adapters while the store is down."""

    stable: tuple[str, str] | None = None
    canary: tuple[str, str] | None = None
    canary_fraction: float = 0.0
    dead: tuple[str, ...] = ()

    def to_json(self) -> bytes:
        """The view as JSON (the gateway's on-disk cache)."""
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, data: bytes) -> RegistryView:
        """A view from `to_json` output."""
        raw = orjson.loads(data)
        return cls(stable=tuple(raw["stable"]) if raw.get("stable") else None,  # type: ignore[arg-type]
                   canary=tuple(raw["canary"]) if raw.get("canary") else None,  # type: ignore[arg-type]
                   canary_fraction=float(raw.get("canary_fraction", 0.0)), dead=tuple(raw.get("dead", ())))


def read_registry(engine: Engine) -> RegistryView:
    """The registry's live adapters and the rolled-back or retired ones (sync; run it in a thread)."""
    stable, canary = live_adapters(engine)
    with Session(engine) as session:
        dead = tuple(session.exec(select(Adapter.name).where(
            Adapter.status.in_(DEAD_ADAPTER_STATES))).all())  # type: ignore[attr-defined]
    return RegistryView(stable=(stable.name, stable.path) if stable else None,
                        canary=(canary.name, canary.path) if canary else None,
                        canary_fraction=canary.canary_fraction if canary else 0.0, dead=dead)


async def reconcile(session: aiohttp.ClientSession, view: RegistryView, upstreams: list[str], base_model: str,
                    previous: Routes | None = None, api_key: str | None = None,
                    default_canary_fraction: float = 0.1) -> Routes:
    """Bring every reachable replica in line with the registry view; return the routes that are safe to serve.

    Requests only go to serving replicas: those reached that hold the stable target. An adapter takes
    traffic only once it is loaded there (the canary only when it is loaded on every serving replica); if
    the stable adapter cannot be loaded anywhere, the previous stable target keeps serving (or the base
    model, if that was an adapter now rolled back). The canary's share is its registry row's
    `canary_fraction`, or `default_canary_fraction` when that is 0. Raises when no replica can be reached.
    """
    wanted = [a for a in (view.stable, view.canary) if a is not None]
    loaded: dict[str, list[str]] = {}
    for upstream in upstreams:
        try:
            models = await loaded_models(session, upstream, api_key)
        except (aiohttp.ClientError, TimeoutError, AdapterLoadError, ValueError) as exc:
            log.warning("replica %s unreachable during reconcile: %s", upstream, exc)
            continue
        # Rolled back, or held under a registry name from another path (a reset store, a shared server).
        other_weights = [n for n, p in wanted if n in models and models[n].get("root", p) != p]
        for name in [*view.dead, *other_weights]:
            if name in models:
                try:
                    await unload_adapter(session, upstream, name, api_key)
                    models.pop(name, None)
                    log.info("unloaded %s from %s", name, upstream)
                except (aiohttp.ClientError, TimeoutError, AdapterLoadError) as exc:
                    log.warning("could not unload %s from %s: %s", name, upstream, exc)
        for name, path in wanted:
            if name in models:
                continue
            try:
                await load_adapter(session, upstream, name, path, api_key)
                models[name] = {"id": name}
                log.info("loaded %s (%s) into %s", name, path, upstream)
            except (aiohttp.ClientError, TimeoutError, AdapterLoadError) as exc:
                log.error("could not load %s into %s: %s", name, upstream, exc)
        loaded[upstream] = sorted(n for n in models if n != base_model)
    if not loaded:
        raise AdapterLoadError("no vLLM replica reachable")

    def holding(name: str) -> list[str]:
        return [u for u, names in loaded.items() if name in names]

    stable_target: str = base_model
    if view.stable is not None and holding(view.stable[0]):
        stable_target = view.stable[0]
    elif view.stable is not None:
        # Keep serving what served before, unless that is an adapter now rolled back or unloaded everywhere.
        prev = previous.stable if previous is not None else base_model
        if prev != base_model and (prev in view.dead or not holding(prev)):
            prev = base_model
        log.error("stable adapter %s is loaded on no replica; %s keeps serving", view.stable[0], prev)
        stable_target = prev
    serving = list(loaded) if stable_target == base_model else holding(stable_target)
    canary_name = None
    if view.canary is not None and all(view.canary[0] in loaded[u] for u in serving):
        canary_name = view.canary[0]
    fraction = (view.canary_fraction or default_canary_fraction) if view.canary is not None else 0.0
    return Routes(stable=stable_target, stable_adapter=None if stable_target == base_model else stable_target,
                  canary=canary_name, canary_fraction=fraction, known=True, loaded=loaded,
                  replicas=tuple(serving))
