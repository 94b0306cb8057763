"""The console on the real PostgreSQL: migrations, users and sessions, the review sample, labels, κ, approval
and the audit trail, through the app as the browser drives it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.engine import Engine
from starlette.testclient import TestClient

from careloop.console import agreement, sampling
from careloop.console.app import create_app
from careloop.console.users import add_user, set_disabled
from careloop.core import registry
from careloop.core.audit_trail import entries
from careloop.core.migrations import upgrade
from careloop.core.settings import Settings
from careloop.core.store import make_engine
from tests.careloop.console.conftest import PASSWORD, csrf_of, login_token, seed_registry, seed_traffic

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_engine(fresh_pg: str) -> Iterator[Engine]:
    """A new PostgreSQL database at head, for this test alone (the draw reads every sampled exchange)."""
    upgrade(fresh_pg)
    engine = make_engine(fresh_pg)
    yield engine
    engine.dispose()


def test_console_flow_on_postgres(settings: Settings, pg_engine: Engine) -> None:
    settings.database_url = str(pg_engine.url.render_as_string(hide_password=False))
    seed_traffic(pg_engine, 10)
    _, v2 = seed_registry(pg_engine)
    for name, role in {"rita": "reviewer", "rob": "reviewer", "anna": "approver"}.items():
        add_user(pg_engine, name, role, PASSWORD)
    settings.console.second_review_share = 1.0
    client = TestClient(create_app(settings, pg_engine), base_url="https://testserver", follow_redirects=False)
    client.post("/login", data={"login_token": login_token(client), "name": "rita", "password": PASSWORD})
    page = client.get("/review").text
    eid = page.split('data-exchange="')[1].split('"')[0]
    assert client.post("/review/label", data={"exchange_id": eid, "harm_level": "1",
                                              "response_class": "Caution"}).status_code == 403
    r = client.post("/review/label", data={"csrf": csrf_of(page), "exchange_id": eid, "harm_level": "1",
                                           "response_class": "Caution"})
    assert r.status_code == 303
    second = sampling.next_for(pg_engine, settings.console, "distilled", "rob")
    assert second is not None and second.item.exchange_id == eid and second.second
    sampling.label(pg_engine, "rob", eid, 1, "Caution")
    assert agreement.people_agreement(pg_engine).n == 1
    report = agreement.judge_agreement(pg_engine, "distilled")
    assert report is not None and report.all.n == 1
    assert client.post(f"/adapters/{v2}/approve", data={"csrf": csrf_of(page), "reason": "x"}).status_code == 403
    set_disabled(pg_engine, "rita")
    assert client.get("/review").status_code == 303  # disabled: signed out at once
    anna = TestClient(create_app(settings, pg_engine), base_url="https://testserver", follow_redirects=False)
    anna.post("/login", data={"login_token": login_token(anna), "name": "anna", "password": PASSWORD})
    csrf = csrf_of(anna.get(f"/adapters/{v2}").text)
    assert anna.post(f"/adapters/{v2}/approve", data={"csrf": csrf, "reason": "clean"}).status_code == 303
    assert registry.get_adapter(pg_engine, v2).status == "stable"  # type: ignore[union-attr]
    assert [(e.actor, e.action) for e in entries(pg_engine) if e.action != "login"] == [("anna", "approve"),
                                                                                        ("rita", "label")]
