"""Admin routes (auth, promote, canary, rollback, retrain, status) and the sticky canary split end to end."""

from __future__ import annotations

from collections import Counter

import aiohttp
import pytest
from sqlmodel import Session, select

from careloop.core import registry
from careloop.core.schema import RetrainRun, TriggerEvent
from careloop.core.settings import Settings
from careloop.core.store import init_db, make_engine
from tests.gateway.fake_upstream import FakeUpstream
from tests.gateway.gateway_helpers import running_gateway

pytestmark = pytest.mark.asyncio(loop_scope="session")

TOKEN = "s3cret-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CHAT = "/v1/chat/completions"


@pytest.fixture
def gw_settings(settings: Settings, fake: FakeUpstream) -> Settings:
    settings.upstream = fake.url
    settings.admin_token = TOKEN
    settings.gateway.routes_refresh_s = 60  # only the admin routes reconcile during a test
    engine = make_engine(settings.database_url or "")
    init_db(engine)
    for _n in (1, 2):
        name, version = registry.next_adapter_name(engine, "smollm2-135m")
        registry.register_adapter(engine, name, f"/adapters/{name}", "smollm2-135m", version)
    engine.dispose()
    return settings


async def _chat(client: aiohttp.ClientSession, url: str, **extra: object) -> int:
    headers = extra.pop("headers", None)
    body = {"model": "assistant", "messages": [{"role": "user", "content": "hi"}], **extra}
    async with client.post(url + CHAT, json=body, headers=headers) as resp:  # type: ignore[arg-type]
        await resp.read()
        return resp.status


@pytest.mark.parametrize(("token", "headers", "status"), [
    (None, AUTH, 404),  # no token configured: the admin API is off
    (TOKEN, {}, 401),
    (TOKEN, {"Authorization": "Bearer wrong"}, 401),
    (TOKEN, {"Authorization": f"Basic {TOKEN}"}, 401),
    (TOKEN, AUTH, 200),
])
async def test_admin_auth(gw_settings: Settings, client: aiohttp.ClientSession, token: str | None,
                          headers: dict[str, str], status: int) -> None:
    gw_settings.admin_token = token
    async with running_gateway(gw_settings) as (_, url):
        for path in ("/admin/status", "/admin/adapters"):
            async with client.get(url + path, headers=headers) as resp:
                assert resp.status == status
                body = await resp.json()
                assert ("error" in body) == (status != 200)
        async with client.post(url + "/admin/rollback", headers=headers) as resp:
            assert resp.status == status


async def test_promote_canary_rollback_drive_routing_and_vllm(gw_settings: Settings, fake: FakeUpstream,
                                                              client: aiohttp.ClientSession) -> None:
    v1, v2 = "smollm2-135m-safety-v1", "smollm2-135m-safety-v2"
    async with running_gateway(gw_settings) as (_gw, url):
        async with client.get(url + "/admin/adapters", headers=AUTH) as resp:
            assert {a["name"]: a["status"] for a in (await resp.json())["data"]} == {v1: "candidate",
                                                                                  v2: "candidate"}
        async with client.post(url + f"/admin/adapters/{v1}/promote", headers=AUTH,
                               json={"reason": "manual test"}) as resp:
            assert resp.status == 200
            assert (await resp.json())["routes"]["stable"] == v1
        # Loaded into vLLM before any traffic was routed to it; the very next request goes there.
        assert ("load", {"lora_name": v1, "lora_path": f"/adapters/{v1}"}) in fake.admin_calls
        assert await _chat(client, url) == 200
        assert fake.requests[-1]["model"] == v1

        async with client.post(url + f"/admin/adapters/{v2}/canary", headers=AUTH, json={"fraction": 0.5}) as resp:
            assert resp.status == 200
        # Sticky: each user always lands on the same target; about half the users on the canary.
        per_user: dict[str, set[str]] = {}
        for i in range(60):
            user = f"user-{i % 20}"
            header = {"X-Session-Id": user} if i % 2 else None
            assert await _chat(client, url, **({"user": user} if not header else {"headers": header})) == 200
            per_user.setdefault(user, set()).add(fake.requests[-1]["model"])
        assert all(len(targets) == 1 for targets in per_user.values())
        split = Counter(next(iter(t)) for t in per_user.values())
        assert set(split) == {v1, v2} and 4 <= split[v2] <= 16

        async with client.post(url + "/admin/rollback", headers=AUTH) as resp:  # the canary goes first
            assert (await resp.json())["rolled_back"] == v2
        assert ("unload", {"lora_name": v2}) in fake.admin_calls
        assert await _chat(client, url, user="user-1") == 200
        assert fake.requests[-1]["model"] == v1
        async with client.post(url + "/admin/rollback", headers=AUTH) as resp:  # then the stable one
            assert (await resp.json())["rolled_back"] == v1
        assert await _chat(client, url, user="user-1") == 200
        assert fake.requests[-1]["model"] == "smollm2-135m"  # nothing promoted before v1: the base model
        async with client.get(url + "/metrics") as resp:
            text = await resp.text()
        assert 'careloop_adapter_info{adapter="smollm2-135m",role="stable"} 1.0' in text

        async with client.post(url + f"/admin/adapters/{v2}/promote", headers=AUTH) as resp:
            assert resp.status == 409  # rolled back adapters never return
        async with client.post(url + "/admin/adapters/nope/promote", headers=AUTH) as resp:
            assert resp.status == 404
        async with client.post(url + f"/admin/adapters/{v1}/canary", headers=AUTH, json={"fraction": "x"}) as resp:
            assert resp.status == 400
    # Every change made with the bearer token is in the audit trail, failed ones are not.
    from careloop.core.audit_trail import entries

    engine = make_engine(gw_settings.database_url or "")
    trail = [(e.actor, e.action, e.target, e.reason) for e in reversed(entries(engine))]
    engine.dispose()
    assert trail == [("admin-token", "promote", v1, "manual test"),
                     ("admin-token", "canary", v2, "set by an operator"),
                     ("admin-token", "rollback", v2, "rolled back by an operator"),
                     ("admin-token", "rollback", v1, "rolled back by an operator")]


async def test_retrain_request_is_recorded_once(gw_settings: Settings, client: aiohttp.ClientSession) -> None:
    async with running_gateway(gw_settings) as (gw, url):
        async with client.post(url + "/admin/retrain", headers=AUTH, json={"reason": "drift seen"}) as resp:
            assert resp.status == 202
            body = await resp.json()
        async with client.post(url + "/admin/retrain", headers=AUTH) as resp:
            assert resp.status == 409 and (await resp.json())["run_id"] == body["run_id"]
        async with client.get(url + "/admin/status", headers=AUTH) as resp:
            status = await resp.json()
        assert status["registry"]["retrain_runs"][0]["status"] == "requested"
        with Session(gw.engine) as session:
            run = session.get(RetrainRun, body["run_id"])
            assert run is not None and run.status == "requested"
            event = session.exec(select(TriggerEvent)).one()
        assert event.retrain_run_id == run.id and event.kind == "manual" and "drift seen" in event.decision


async def test_store_down_keeps_routing_by_the_last_registry_view(gw_settings: Settings, fake: FakeUpstream,
                                                                  client: aiohttp.ClientSession) -> None:
    from tests.conftest import free_port

    v1 = "smollm2-135m-safety-v1"
    engine = make_engine(gw_settings.database_url or "")
    registry.promote(engine, v1)
    engine.dispose()
    async with running_gateway(gw_settings) as (gw, url):
        assert gw.routes.stable == v1
    # Restart with the store unreachable: the cached view still routes to v1 and requests still get served.
    gw_settings.database_url = f"postgresql://careloop@127.0.0.1:{free_port()}/gone"
    async with running_gateway(gw_settings) as (gw, url):
        assert gw.routes.stable == v1 and gw.routes.known
        assert await _chat(client, url) == 200
        assert fake.requests[-1]["model"] == v1
    assert list(gw_settings.spool_dir.glob("exchanges-*.jsonl"))  # the exchange waits in the spool
