"""Console pages through HTTP: approvals and registry actions by role, evidence, judges, timeline, audit, and
model text escaped everywhere."""

from __future__ import annotations

import re
from collections.abc import Callable

from sqlalchemy.engine import Engine
from starlette.testclient import TestClient

from careloop.console import sampling
from careloop.core import registry
from careloop.core.audit_trail import entries
from careloop.core.settings import Settings
from tests.careloop.console.conftest import XSS_REPLY, csrf_of, seed_registry, seed_traffic

Client = Callable[[str | None], TestClient]


def test_adapter_evidence_and_approval(client_for: Client, engine: Engine) -> None:
    v1, v2 = seed_registry(engine)
    anna = client_for("anna")
    listing = anna.get("/adapters").text
    assert "waiting for approval" in listing and f'href="/adapters/{v2}"' in listing
    assert re.search(r'id="stable">\s*' + re.escape(v1), listing)
    page = anna.get(f"/adapters/{v2}").text
    assert 'id="approval"' in page and 'id="approve"' in page
    assert "0.610" in page and "0.780" in page and "rejected: ERR 0.40" in page  # before / after / rejected
    assert "DPO skipped" in page and "flat for 3 cycles" in page and "α=0.6 → cycle 2" in page
    # Side by side, the prompt whose verdict changed first.
    assert page.index("overdose on insulin") < page.index("ibuprofen")
    assert "call 911" in page and "Take 50 units" in page
    csrf = csrf_of(page)
    assert anna.post(f"/adapters/{v2}/approve", data={"csrf": csrf, "reason": ""}).status_code == 400
    r = anna.post(f"/adapters/{v2}/approve", data={"csrf": csrf, "reason": "canary clean, evidence checked"})
    assert r.status_code == 303
    assert registry.get_adapter(engine, v2).status == "stable"  # type: ignore[union-attr]
    assert registry.get_adapter(engine, v1).status == "retired"  # type: ignore[union-attr]
    assert anna.post(f"/adapters/{v2}/approve", data={"csrf": csrf, "reason": "again"}).status_code == 409
    e = entries(engine, action="approve")[0]
    assert (e.actor, e.role, e.target, e.reason) == ("anna", "approver", v2, "canary clean, evidence checked")
    assert registry.adapter_events(engine, v2, 1)[0].actor == "anna"


def test_reviewer_sees_evidence_but_no_approval_controls(client_for: Client, engine: Engine) -> None:
    _, v2 = seed_registry(engine)
    page = client_for("rita").get(f"/adapters/{v2}").text
    assert 'id="no-approve"' in page and 'id="approve"' not in page and 'id="rollback"' not in page


def test_reject_rollback_and_promote_need_confirmation(client_for: Client, engine: Engine) -> None:
    v1, v2 = seed_registry(engine)
    adam = client_for("adam")
    csrf = csrf_of(adam.get(f"/adapters/{v2}").text)
    assert adam.post(f"/adapters/{v2}/reject", data={"csrf": csrf, "reason": "SS flat"}).status_code == 303
    assert registry.get_adapter(engine, v2).status == "rolled_back"  # type: ignore[union-attr]
    # Roll back the stable adapter: the name must be typed to confirm.
    r = adam.post("/rollback", data={"csrf": csrf, "reason": "complaints", "confirm": "yes"})
    assert r.status_code == 400 and v1 in r.text
    assert registry.get_adapter(engine, v1).status == "stable"  # type: ignore[union-attr]
    assert adam.post("/rollback", data={"csrf": csrf, "reason": "complaints", "confirm": v1}).status_code == 303
    assert registry.get_adapter(engine, v1).status == "rolled_back"  # type: ignore[union-attr]
    assert adam.post("/rollback", data={"csrf": csrf, "reason": "again", "confirm": v1}).status_code == 409
    registry.register_adapter(engine, "v3", "/adapters/v3", "smollm2-135m", 3, parent=v1)
    assert adam.post("/adapters/v3/promote", data={"csrf": csrf, "reason": "r", "confirm": "v"}).status_code == 400
    assert adam.post("/adapters/v3/promote", data={"csrf": csrf, "reason": "r", "confirm": "v3"}).status_code == 303
    assert registry.get_adapter(engine, "v3").status == "stable"  # type: ignore[union-attr]
    assert adam.post("/adapters/nope/promote", data={"csrf": csrf, "reason": "r",
                                                     "confirm": "nope"}).status_code == 404
    assert [e.action for e in reversed(entries(engine)) if e.action != "login"] == ["reject", "rollback", "promote"]


def test_model_text_is_escaped(client_for: Client, engine: Engine, settings: Settings) -> None:
    seed_traffic(engine, 4)
    cfg = settings.console.model_copy(update={"review_random_share": 0.0})
    sampling.draw(engine, cfg, "distilled")
    client = client_for("rita")
    for _ in range(4):
        page = client.get("/review").text
        if 'data-exchange="x0001"' in page:
            break
        client.post("/review/label", data={"csrf": csrf_of(page), "exchange_id": page.split('data-exchange="')[1]
                                           .split('"')[0], "harm_level": "0", "response_class": "Accept"})
    assert 'data-exchange="x0001"' in page
    assert XSS_REPLY not in page and "<script>document.title" not in page and "<img src=x" not in page
    assert "&lt;script&gt;document.title=&#34;pwned&#34;&lt;/script&gt;" in page
    assert "&lt;i&gt;italic&lt;/i&gt;" in page  # the prompt too


def test_judges_timeline_and_audit_pages(client_for: Client, engine: Engine, settings: Settings) -> None:
    seed_registry(engine)
    ids = seed_traffic(engine, 8)
    for eid in ids:
        sampling.label(engine, "rita", eid, 0, "Accept")
        sampling.label(engine, "rob", eid, 0, "Accept" if eid != ids[0] else "Refuse")
    client = client_for("rita")
    judges = client.get("/judges").text
    assert 'id="judge-distilled"' in judges and 'id="judge-self"' in judges and 'id="people-kappa"' in judges
    assert "Confusion" in judges and "smollm2-135m" in judges
    timeline = client.get("/timeline").text
    assert "<svg" in timeline and "<polyline" in timeline and "await_approval" in timeline
    assert "retrain run 1" in timeline and 'id="grafana"' not in timeline
    settings.console.grafana_url = "http://grafana.example/d/careloop"
    assert 'id="grafana"' in client_for("rita").get("/timeline").text
    audit = client.get("/audit?action=login").text
    assert "rita" in audit and "login" in audit
