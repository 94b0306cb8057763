"""Console fixtures: a migrated store with sampled, judged traffic, users of each role, a signed-in client."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from sqlalchemy.engine import Engine
from starlette.testclient import TestClient

from careloop.console.app import create_app
from careloop.console.users import add_user
from monitor.scoring import safety_score
from service.migrations import upgrade
from service.schema import Exchange, Verdict, utcnow
from service.settings import Settings
from service.store import make_engine, session_scope

PASSWORD = "correct horse battery"
XSS_REPLY = '<script>document.title="pwned"</script><img src=x onerror="document.title=\'pwned\'"><b>bold</b>'


def seed_traffic(engine: Engine, n: int = 12, adapter: str = "smollm2-135m", prefix: str = "x") -> list[str]:
    """n sampled exchanges graded by `distilled` (with its class probability) and `self`.

    Every third one the judges disagree; exchange 1 has a reply made of HTML and script; confidences fall
    with the index so the least confident are known.
    """
    now = utcnow()
    ids = []
    with session_scope(engine) as s:
        for i in range(n):
            eid = f"{prefix}{i:04d}"
            ids.append(eid)
            reply = XSS_REPLY if i == 1 else f"reply {i}: drink water and rest"
            s.add(Exchange(id=eid, target=adapter, sampled=True, judge_state="done",
                           created_at=now - timedelta(minutes=n - i),
                           request_messages=[{"role": "user", "content": f"prompt {i} <i>italic</i>"}],
                           response_text=reply))
        s.flush()
        for i, eid in enumerate(ids):
            cls = "Accept" if i % 2 else "Refuse"
            other = "Caution" if i % 3 == 0 else cls
            p = 0.95 - 0.5 * i / max(n - 1, 1)
            s.add(Verdict(exchange_id=eid, adapter=adapter, judge="distilled", judge_version="v1", harm_level=0,
                          response_class=cls, score=safety_score(0, cls),
                          rationale=f"p({cls})={p:.2f}, p(h=0)=0.90", created_at=now - timedelta(minutes=n - i)))
            s.add(Verdict(exchange_id=eid, adapter=adapter, judge="self", harm_level=0, response_class=other,
                          score=safety_score(0, other), created_at=now - timedelta(minutes=n - i)))
    return ids


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    """The store at head (through the migrations, as `careloop console` starts it)."""
    upgrade(settings.database_url or "")
    eng = make_engine(settings.database_url or "")
    yield eng
    eng.dispose()


@pytest.fixture
def people(engine: Engine) -> dict[str, str]:
    """One user of each role: name -> role."""
    roles = {"rita": "reviewer", "rob": "reviewer", "anna": "approver", "adam": "admin"}
    for name, role in roles.items():
        add_user(engine, name, role, PASSWORD)
    return roles


def login_token(client: TestClient) -> str:
    """Open the sign-in form and return its double-submit token."""
    page = client.get("/login")
    match = re.search(r'name="login_token" value="([^"]+)"', page.text)
    assert match, page.text
    return match.group(1)


def csrf_of(html: str) -> str:
    """The CSRF token a page's forms carry."""
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, html
    return match.group(1)


@pytest.fixture
def client_for(settings: Settings, engine: Engine, people: dict[str, str]) -> Callable[[str | None], TestClient]:
    """A TestClient over HTTPS (the cookie is Secure), signed in as `name` (None: not signed in)."""

    def make(name: str | None) -> TestClient:
        client = TestClient(create_app(settings, engine), base_url="https://testserver", follow_redirects=False)
        if name is not None:
            r = client.post("/login", data={"login_token": login_token(client), "name": name,
                                            "password": PASSWORD, "next": "/review"})
            assert r.status_code == 303, r.text
        return client

    return make
