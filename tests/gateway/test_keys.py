"""Client keys: stored hashed, required unless bound to loopback, managed by CLI and admin API, rate limited
per key (429 with Retry-After), the key's name stored with each exchange and on the request metrics."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from sqlmodel import Session, select
from typer.testing import CliRunner

from careloop.cli import app
from careloop.core.migrations import upgrade
from careloop.core.schema import ClientKey
from careloop.core.settings import Settings
from careloop.core.store import make_engine
from careloop.gateway.keys import (
    KeyAdminError,
    create_key,
    hash_key,
    keys_required,
    list_keys,
    parse_expiry,
    revoke_key,
    startup_message,
)
from careloop.gateway.ratelimit import usage_tokens
from tests.gateway.fake_upstream import FakeUpstream
from tests.gateway.gateway_helpers import running_gateway
from tests.gateway.test_proxy import CHAT, MESSAGES, rows

BODY = {"model": "assistant", "messages": MESSAGES}


def test_keys_stored_hashed_listed_and_revoked(settings: Settings) -> None:
    engine = make_engine(settings.database_url or "")
    upgrade(settings.database_url or "")
    key, _row = create_key(engine, "ward-app", rpm=60, tpm=1000, expires_at=parse_expiry("90d"))
    assert key.startswith("ck-") and len(key) > 40
    with Session(engine) as s:
        stored = s.exec(select(ClientKey)).one()
    assert stored.key_hash == hash_key(key) and key not in (stored.key_hash, stored.prefix)
    assert stored.prefix == key[:10]
    with pytest.raises(KeyAdminError, match="already exists"):
        create_key(engine, "ward-app")
    with pytest.raises(KeyAdminError):
        create_key(engine, "bad name!")
    with pytest.raises(KeyAdminError):
        create_key(engine, "zero", rpm=0)
    revoke_key(engine, "ward-app")
    assert list_keys(engine)[0].revoked_at is not None
    with pytest.raises(KeyAdminError, match="no key named"):
        revoke_key(engine, "nobody")
    engine.dispose()


def test_parse_expiry() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_expiry("90d", now) == now + timedelta(days=90)
    assert parse_expiry("12h", now) == now + timedelta(hours=12)
    assert parse_expiry("2027-03-01") == datetime(2027, 3, 1, tzinfo=UTC)
    with pytest.raises(KeyAdminError):
        parse_expiry("soon")


@pytest.mark.parametrize(("host", "mode", "required"), [
    ("127.0.0.1", "auto", False), ("::1", "auto", False), ("localhost", "auto", False),
    ("0.0.0.0", "auto", True), ("10.1.2.3", "auto", True), ("127.0.0.1", "on", True), ("0.0.0.0", "off", False)])
def test_keys_required_unless_loopback(settings: Settings, host: str, mode: str, required: bool) -> None:
    settings.gateway.host = host
    settings.keys.require = mode  # type: ignore[assignment]
    assert keys_required(settings) is required
    level, message = startup_message(settings)
    assert ("REQUIRED" in message) is required
    assert level == (logging.INFO if required else logging.WARNING)


def test_usage_tokens_read_from_body_or_stream_tail() -> None:
    assert usage_tokens(b'{"choices":[],"usage":{"prompt_tokens":11,"completion_tokens":3,"total_tokens":14}}') == 14
    assert usage_tokens([b'data: {"choices":[{"delta":{}}]}\n\n',
                         b'data: {"choices":[],"usage":{"total_tokens": 27}}\n\ndata: [DONE]\n\n']) == 27
    assert usage_tokens(b'{"choices":[]}') is None and usage_tokens(None) is None


def test_cli_create_list_revoke(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARELOOP_DATABASE_URL", settings.database_url or "")
    runner = CliRunner()
    made = runner.invoke(app, ["keys", "create", "triage-bot", "--rpm", "30", "--expires", "30d"])
    assert made.exit_code == 0, made.output
    key = made.stdout.strip()
    assert key.startswith("ck-")
    listed = runner.invoke(app, ["keys", "list"])
    assert "triage-bot" in listed.stdout and key not in listed.stdout and "active" in listed.stdout
    assert runner.invoke(app, ["keys", "revoke", "triage-bot"]).exit_code == 0
    assert "revoked" in runner.invoke(app, ["keys", "list"]).stdout
    assert runner.invoke(app, ["keys", "revoke", "nobody"]).exit_code == 2


@pytest.fixture
def keyed(settings: Settings, fake: FakeUpstream) -> Settings:
    settings.upstream = fake.url
    settings.keys.require = "on"
    settings.admin_token = "admin-secret-0123456789"
    upgrade(settings.database_url or "")
    return settings


@pytest.mark.asyncio(loop_scope="session")
async def test_gateway_requires_a_valid_key_and_records_its_name(keyed: Settings) -> None:
    admin = {"Authorization": "Bearer admin-secret-0123456789"}
    async with running_gateway(keyed) as (_gw, url), aiohttp.ClientSession() as client:
        resp = await client.post(url + CHAT, json=BODY)
        assert resp.status == 401
        assert (await resp.json())["error"]["code"] == "invalid_api_key"
        assert (await client.get(url + "/v1/models")).status == 401
        resp = await client.post(url + CHAT, json=BODY, headers={"Authorization": "Bearer ck-wrong"})
        assert resp.status == 401
        made = await client.post(url + "/admin/keys", json={"name": "ward-app", "rpm": 1000}, headers=admin)
        assert made.status == 201
        key = (await made.json())["key"]
        auth = {"Authorization": f"Bearer {key}"}
        resp = await client.post(url + CHAT, json=BODY, headers=auth)  # known at once on this replica
        assert resp.status == 200
        assert (await client.get(url + "/v1/models", headers=auth)).status == 200
        listed = await (await client.get(url + "/admin/keys", headers=admin)).json()
        assert [k["name"] for k in listed["data"]] == ["ward-app"] and key not in str(listed)
        metrics = await (await client.get(url + "/metrics")).text()
        assert 'careloop_requests_total{adapter="smollm2-135m",code="200",key="ward-app"} 1.0' in metrics
        assert 'code="401",key="none"} 2.0' in metrics  # chat requests (not /v1/models)
        assert (await client.post(url + "/admin/keys/ward-app/revoke", headers=admin)).status == 200
        assert (await client.post(url + CHAT, json=BODY, headers=auth)).status == 401
        assert (await client.post(url + "/admin/keys/nobody/revoke", headers=admin)).status == 404
        assert (await client.post(url + "/admin/keys", json={"name": "ward-app"}, headers=admin)).status == 409
        assert (await client.post(url + "/admin/keys", json={"name": "x", "rpm": -1}, headers=admin)).status == 400
        old = await client.post(url + "/admin/keys", json={"name": "old", "expires": "2020-01-01"}, headers=admin)
        expired = {"Authorization": f"Bearer {(await old.json())['key']}"}
        resp = await client.post(url + CHAT, json=BODY, headers=expired)
        assert resp.status == 401 and "expired" in (await resp.json())["error"]["message"]
    (row,) = rows(keyed)  # only the admitted request is logged
    assert row.key_name == "ward-app"


@pytest.mark.asyncio(loop_scope="session")
async def test_per_key_request_and_token_limits(keyed: Settings) -> None:
    engine = make_engine(keyed.database_url or "")
    rpm_key, _ = create_key(engine, "rpm-5", rpm=5)
    tpm_key, _ = create_key(engine, "tpm-30", tpm=30)  # the fake's replies cost 14 tokens
    free_key, _ = create_key(engine, "unlimited")
    engine.dispose()
    async with running_gateway(keyed) as (_gw, url), aiohttp.ClientSession() as client:
        codes = []
        for _ in range(7):
            resp = await client.post(url + CHAT, json=BODY, headers={"Authorization": f"Bearer {rpm_key}"})
            codes.append(resp.status)
        assert codes == [200] * 5 + [429] * 2
        body = await resp.json()
        assert body["error"]["type"] == "requests" and body["error"]["code"] == "rate_limit_exceeded"
        assert 1 <= int(resp.headers["Retry-After"]) <= 60
        codes = []
        for _ in range(5):
            resp = await client.post(url + CHAT, json=BODY, headers={"Authorization": f"Bearer {tpm_key}"})
            codes.append(resp.status)
        # Admitted while the key has tokens left: 14 + 14 = 28 < 30, the third passes the limit by its own
        # tokens (known only after it), then the key is out.
        assert codes == [200, 200, 200, 429, 429]
        assert (await resp.json())["error"]["type"] == "tokens"
        for _ in range(10):
            resp = await client.post(url + CHAT, json=BODY, headers={"Authorization": f"Bearer {free_key}"})
            assert resp.status == 200
        metrics = await (await client.get(url + "/metrics")).text()
        assert 'careloop_requests_total{adapter="none",code="429",key="rpm-5"} 2.0' in metrics


@pytest.mark.asyncio(loop_scope="session")
async def test_open_loopback_gateway_serves_unknown_keys_anonymously_and_limits_known_ones(
        settings: Settings, fake: FakeUpstream) -> None:
    settings.upstream = fake.url
    upgrade(settings.database_url or "")
    engine = make_engine(settings.database_url or "")
    key, _ = create_key(engine, "limited", rpm=2)
    engine.dispose()
    async with running_gateway(settings) as (_gw, url), aiohttp.ClientSession() as client:
        for auth in ("Bearer sk-dummy-from-an-sdk", "Basic abc", None):
            headers = {"Authorization": auth} if auth else {}
            assert (await client.post(url + CHAT, json=BODY, headers=headers)).status == 200
        codes = [(await client.post(url + CHAT, json=BODY, headers={"Authorization": f"Bearer {key}"})).status
                 for _ in range(3)]
        assert codes == [200, 200, 429]
    assert sorted(str(r.key_name) for r in rows(settings)) == ["None", "None", "None", "limited", "limited"]


@pytest.mark.asyncio(loop_scope="session")
async def test_limiter_claims_small_slices_and_never_more_than_the_limit(settings: Settings) -> None:
    from careloop.gateway.keys import KeyInfo
    from careloop.gateway.ratelimit import RateLimited, RateLimiter

    upgrade(settings.database_url or "")
    engine = make_engine(settings.database_url or "")
    now = [1_000_020.0]
    replicas = [RateLimiter(engine, window_s=60, claim_fraction=0.1, clock=lambda: now[0]) for _ in range(3)]
    key = KeyInfo("shared", rpm=100, tpm=None, expires_at=None)
    admitted = refused = 0
    for i in range(150):  # the replicas take turns, as a load balancer would spread them
        try:
            await replicas[i % 3].admit(key)
            admitted += 1
        except RateLimited as exc:
            refused += 1
            assert 1 <= exc.retry_after <= 60 and exc.headers() == [(b"retry-after", str(exc.retry_after).encode())]
    assert admitted == 100 and refused == 50
    assert sum(r.claims for r in replicas) <= 100 // 10 + 3 * 2  # slices of 10, not a store trip per request
    now[0] += 60  # next window: quota again
    await replicas[0].admit(key)
    engine.dispose()


@pytest.mark.asyncio(loop_scope="session")
async def test_a_gateway_starting_while_the_store_is_down_knows_the_keys_it_last_read(settings: Settings) -> None:
    from careloop.gateway.keys import KeyRing

    upgrade(settings.database_url or "")
    engine = make_engine(settings.database_url or "")
    key, _ = create_key(engine, "ward-app", rpm=10)
    cache = settings.spool_dir / "client-keys.json"
    ring = KeyRing(engine, cache=cache)
    await ring.reload()
    assert key not in cache.read_text() and hash_key(key) in cache.read_text()
    engine.dispose()
    down = make_engine("postgresql://postgres@127.0.0.1:1/none", connect_args={"connect_timeout": 1})
    restarted = KeyRing(down, cache=cache)
    await restarted.reload()
    info = await restarted.authenticate(f"Bearer {key}".encode())
    assert info is not None and info.name == "ward-app" and info.rpm == 10
    down.dispose()
