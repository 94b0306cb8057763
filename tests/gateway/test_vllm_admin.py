"""Reconcile: adapters loaded on every replica before they take traffic, replicas that fail are not served."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from careloop.gateway.routing import Routes
from careloop.gateway.vllm_admin import RegistryView, loaded_models, reconcile
from tests.conftest import free_port
from tests.gateway.fake_upstream import FakeUpstream

pytestmark = pytest.mark.asyncio(loop_scope="session")
BASE = "smollm2-135m"


@pytest.fixture
async def replicas() -> AsyncIterator[list[FakeUpstream]]:
    fakes = [FakeUpstream(), FakeUpstream()]
    for fake in fakes:
        await fake.start()
    yield fakes
    for fake in fakes:
        await fake.stop()


async def test_loads_everywhere_and_unloads_the_dead(replicas: list[FakeUpstream]) -> None:
    replicas[1].loaded.add("v1")  # rolled back earlier, still loaded on one replica
    view = RegistryView(stable=("v2", "/a/v2"), canary=("v3", "/a/v3"), canary_fraction=0.0, dead=("v1",))
    async with aiohttp.ClientSession() as session:
        routes = await reconcile(session, view, [r.url for r in replicas], BASE, default_canary_fraction=0.2)
        for fake in replicas:
            assert set(await loaded_models(session, fake.url)) == {BASE, "v2", "v3"}
    assert (routes.stable, routes.canary, routes.canary_fraction) == ("v2", "v3", 0.2)
    assert routes.replicas == tuple(r.url for r in replicas)


async def test_a_replica_without_the_stable_adapter_gets_no_traffic(replicas: list[FakeUpstream]) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    view = RegistryView(stable=("v2", "/a/v2"))
    async with aiohttp.ClientSession() as session:
        routes = await reconcile(session, view, [replicas[0].url, down], BASE)
    assert routes.stable == "v2" and routes.replicas == (replicas[0].url,)


async def test_canary_waits_until_loaded_on_every_serving_replica(replicas: list[FakeUpstream]) -> None:
    replicas[1].refuse_loads.add("v3")
    view = RegistryView(stable=("v2", "/a/v2"), canary=("v3", "/a/v3"), canary_fraction=0.5)
    async with aiohttp.ClientSession() as session:
        routes = await reconcile(session, view, [r.url for r in replicas], BASE)
        assert routes.stable == "v2" and routes.canary is None  # not on every serving replica: no canary
        replicas[1].refuse_loads.clear()
        routes = await reconcile(session, view, [r.url for r in replicas], BASE, previous=routes)
        assert routes.canary == "v3" and routes.canary_fraction == 0.5


async def test_unloadable_stable_keeps_the_previous_target(replicas: list[FakeUpstream]) -> None:
    for fake in replicas:
        fake.loaded.add("v2")
        fake.refuse_loads.add("v4")
    previous = Routes(stable="v2", stable_adapter="v2", known=True)
    async with aiohttp.ClientSession() as session:
        routes = await reconcile(session, RegistryView(stable=("v4", "/a/v4")), [r.url for r in replicas], BASE,
                                 previous=previous)
        assert routes.stable == "v2" and len(routes.replicas) == 2
        # ... unless the previous one was rolled back: then the base model serves.
        routes = await reconcile(session, RegistryView(stable=("v4", "/a/v4"), dead=("v2",)),
                                 [r.url for r in replicas], BASE, previous=previous)
        assert routes.stable == BASE and routes.stable_adapter is None


async def test_a_name_loaded_from_other_weights_is_reloaded_from_the_registry_s_path(
        replicas: list[FakeUpstream]) -> None:
    # vLLM still holds "v1" from another store (reset home, a server shared with other tests): same name,
    # other weights. Serving it would be serving an adapter nobody registered.
    replicas[0].loaded.add("v1")
    replicas[0].roots["v1"] = "/old-home/adapters/v1"
    view = RegistryView(stable=("v1", "/a/v1"))
    async with aiohttp.ClientSession() as session:
        routes = await reconcile(session, view, [r.url for r in replicas], BASE)
        for fake in replicas:
            assert (await loaded_models(session, fake.url))["v1"]["root"] == "/a/v1"
        calls = [(c, b["lora_name"]) for c, b in replicas[0].admin_calls]
        assert calls == [("unload", "v1"), ("load", "v1")]
        # Loaded from the right path already: left alone.
        await reconcile(session, view, [r.url for r in replicas], BASE, previous=routes)
        assert len(replicas[0].admin_calls) == 2
    assert routes.stable == "v1" and len(routes.replicas) == 2


async def test_view_round_trips_through_json() -> None:
    view = RegistryView(stable=("v2", "/a/v2"), canary=("v3", "/a/v3"), canary_fraction=0.5, dead=("v1",))
    assert RegistryView.from_json(view.to_json()) == view
