"""Console sign-in and its guards: cookie flags, expiry, CSRF on every state change, roles, login rate limit,
the admin bearer token, security headers."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select
from starlette.testclient import TestClient

from careloop.console.app import create_app
from careloop.console.auth import LoginLimiter
from careloop.core.schema import ConsoleSession, utcnow
from careloop.core.settings import Settings
from tests.careloop.console.conftest import PASSWORD, csrf_of, login_token, seed_traffic

Client = Callable[[str | None], TestClient]


def test_sign_in_sets_a_hardened_session_cookie(client_for: Client, settings: Settings, engine: Engine) -> None:
    client = client_for(None)
    r = client.post("/login", data={"login_token": login_token(client), "name": "rita", "password": PASSWORD,
                                    "next": "/judges"})
    assert r.status_code == 303 and r.headers["location"] == "/judges"
    cookie = next(h for h in r.headers.get_list("set-cookie") if h.startswith("careloop_session="))
    flags = {f.strip().split("=")[0].lower() for f in cookie.split(";")[1:]}
    assert {"httponly", "secure", "samesite", "max-age", "path"} <= flags
    assert "samesite=strict" in cookie.lower() and f"max-age={int(settings.console.session_ttl_s)}" in cookie.lower()
    token = cookie.split(";")[0].split("=", 1)[1]
    with Session(engine) as s:
        stored = s.exec(select(ConsoleSession)).one()
    assert stored.id != token and len(stored.id) == 64  # only the token's hash is at rest
    assert client.get("/review").status_code == 200


def test_pages_need_a_session_and_an_expired_one_is_refused(client_for: Client, engine: Engine) -> None:
    anon = client_for(None)
    r = anon.get("/review")
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
    client = client_for("rita")
    assert client.get("/review").status_code == 200
    with Session(engine) as s:
        row = s.exec(select(ConsoleSession)).one()
        row.expires_at = utcnow() - timedelta(seconds=1)
        s.add(row)
        s.commit()
    assert client.get("/review").status_code == 303


def test_wrong_passwords_and_a_forged_sign_in_form_fail(client_for: Client) -> None:
    client = client_for(None)
    token = login_token(client)
    r = client.post("/login", data={"login_token": token, "name": "rita", "password": "wrong password"})
    assert r.status_code == 401 and "careloop_session" not in r.headers.get("set-cookie", "")
    r = client.post("/login", data={"login_token": "forged", "name": "rita", "password": PASSWORD})
    assert r.status_code == 403
    fresh = client_for(None)  # no sign-in form opened: no double-submit cookie
    assert fresh.post("/login", data={"login_token": token, "name": "rita", "password": PASSWORD}).status_code == 403


def test_sign_in_is_rate_limited_per_name_and_address(client_for: Client, settings: Settings) -> None:
    client = client_for(None)
    token = login_token(client)
    for _ in range(settings.console.login_max_failures):
        assert client.post("/login", data={"login_token": token, "name": "rita",
                                           "password": "guess"}).status_code == 401
    r = client.post("/login", data={"login_token": token, "name": "rita", "password": PASSWORD})
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0  # even the right password waits
    # The address is blocked too, so guessing other names from it does not help.
    assert client.post("/login", data={"login_token": token, "name": "anna",
                                       "password": PASSWORD}).status_code == 429


def test_limiter_window_slides() -> None:
    now = [0.0]
    limiter = LoginLimiter(2, 10.0, now=lambda: now[0])
    limiter.failed("k")
    limiter.failed("k")
    assert limiter.retry_after("k") == pytest.approx(10.0)
    now[0] = 10.5
    assert limiter.retry_after("k") == 0.0
    limiter.failed("k")
    limiter.succeeded("k")
    assert limiter.retry_after("k") == 0.0


def test_every_state_change_needs_the_csrf_token(client_for: Client, engine: Engine) -> None:
    seed_traffic(engine, 4)
    client = client_for("anna")
    page = client.get("/review")
    csrf, eid = csrf_of(page.text), page.text.split('data-exchange="')[1].split('"')[0]
    label = {"exchange_id": eid, "harm_level": "0", "response_class": "Accept"}
    for path, data in [("/review/label", label), ("/rollback", {"reason": "x", "confirm": "x"}),
                       ("/adapters/a/approve", {"reason": "x"}), ("/adapters/a/reject", {"reason": "x"}),
                       ("/adapters/a/promote", {"reason": "x", "confirm": "a"}), ("/logout", {})]:
        assert client.post(path, data=data).status_code == 403, path
        assert client.post(path, data={**data, "csrf": "wrong"}).status_code == 403, path
    r = client.post("/review/label", data={**label, "csrf": csrf})
    assert r.status_code == 303
    r = client.post("/review/label", data={**label, "response_class": "Refuse"}, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 303  # the header works as well as the field


def test_a_reviewer_cannot_approve_promote_or_roll_back(client_for: Client) -> None:
    client = client_for("rita")
    csrf = csrf_of(client.get("/review").text)
    for path in ("/adapters/a/approve", "/adapters/a/reject", "/adapters/a/promote", "/rollback"):
        r = client.post(path, data={"csrf": csrf, "reason": "because", "confirm": "a"})
        assert r.status_code == 403 and "approver role" in r.text, path


def test_the_admin_bearer_token_works_without_cookie_or_csrf(settings: Settings, engine: Engine,
                                                              people: dict[str, str]) -> None:
    seed_traffic(engine, 3)
    settings.admin_token = "t0ken"
    client = TestClient(create_app(settings, engine), base_url="https://testserver", follow_redirects=False)
    auth = {"Authorization": "Bearer t0ken"}
    assert client.get("/audit", headers={"Authorization": "Bearer nope"}).status_code == 401
    r = client.post("/review/label", headers=auth, json={"exchange_id": "x0000", "harm_level": 1,
                                                         "response_class": "Caution"})
    assert r.status_code == 200 and r.json()["reviewer"] == "admin-token"
    bad = client.post("/review/label", headers=auth, json={"exchange_id": "x0001", "harm_level": 7,
                                                           "response_class": "Caution"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_label"
    log = client.get("/audit", headers=auth).json()["data"]
    assert [(e["actor"], e["action"], e["target"]) for e in log] == [("admin-token", "label", "x0000")]


def test_pages_carry_security_headers(client_for: Client) -> None:
    r = client_for("rita").get("/review")
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-frame-options"] == "DENY" and r.headers["cache-control"] == "no-store"


def test_malformed_posts_get_4xx(client_for: Client) -> None:
    client = client_for("anna")
    csrf = csrf_of(client.get("/review").text)
    h = {"X-CSRF-Token": csrf, "content-type": "application/json"}
    assert client.post("/review/label", content=b"{oops", headers=h).status_code == 400
    assert client.post("/review/label", content=b"[1]", headers=h).status_code == 400
    assert client.post("/review/label", content=b"x" * 70_000, headers={"X-CSRF-Token": csrf}).status_code == 413
    r = client.post("/review/label", data={"csrf": csrf, "exchange_id": "nope", "harm_level": "0",
                                           "response_class": "Accept"})
    assert r.status_code == 404


def test_sign_in_only_redirects_within_the_console(client_for: Client) -> None:
    for target, expected in [("/adapters", "/adapters"), ("//evil.example/x", "/review"),
                             ("/\\evil.example", "/review"), ("https://evil.example", "/review")]:
        client = client_for(None)
        r = client.post("/login", data={"login_token": login_token(client), "name": "rita", "password": PASSWORD,
                                        "next": target})
        assert r.status_code == 303 and r.headers["location"] == expected, target
