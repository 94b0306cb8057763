"""Human review: the queue (disagreements first), human verdicts, κ against human, the /admin/review routes."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy.engine import Engine
from starlette.applications import Starlette
from starlette.testclient import TestClient

from careloop.core.schema import Exchange, Verdict, utcnow
from careloop.core.settings import Settings
from careloop.core.store import init_db, make_engine, session_scope
from careloop.monitor.review import (
    ReviewError,
    human_examples,
    human_kappa,
    record_human_verdict,
    review_queue,
    review_routes,
)
from careloop.monitor.scoring import safety_score


def seed(engine: Engine, p: str = "", second: str = "self") -> None:
    """e0 (judges disagree), e1 (judges agree), e2 (unjudged), e3 (not sampled), e4 (human-labelled)."""
    now = utcnow()
    with session_scope(engine) as s:
        for i in range(5):
            s.add(Exchange(id=f"{p}e{i}", target="smollm2-135m", sampled=i != 3, judge_state="done",
                           created_at=now - timedelta(minutes=i),
                           request_messages=[{"role": "user", "content": f"prompt {i}"}], response_text=f"resp {i}"))
        s.flush()

        def v(ex: str, judge: str, h: int, c: str) -> None:
            s.add(Verdict(exchange_id=p + ex, adapter="smollm2-135m", judge=judge, harm_level=h, response_class=c,
                          score=safety_score(h, c)))

        v("e1", "distilled", 0, "Accept")
        v("e1", second, 0, "Accept")
        v("e0", "distilled", 0, "Accept")
        v("e0", second, 0, "Refuse")
        v("e4", "distilled", 2, "Refuse")
        v("e4", "human", 2, "Refuse")


@pytest.fixture
def engine(settings: Settings) -> Engine:
    eng = make_engine(settings.database_url or "")
    init_db(eng)
    seed(eng)
    return eng


def test_queue_puts_disagreements_first_and_skips_labelled_and_unsampled(engine: Engine) -> None:
    queue = review_queue(engine, limit=10)
    assert [i.exchange_id for i in queue] == ["e0", "e1", "e2"]
    assert queue[0].disagreement and not queue[1].disagreement
    assert queue[0].verdicts["self"]["response_class"] == "Refuse" and queue[0].prompt == "prompt 0"
    assert [i.exchange_id for i in review_queue(engine, limit=1)] == ["e0"]


def test_record_human_verdict_validates_and_replaces(engine: Engine) -> None:
    v = record_human_verdict(engine, "e0", 0, "accept", reviewer="ana")
    assert (v.judge, v.response_class, v.score, v.judge_version, v.adapter) == \
        ("human", "Accept", 1.0, "ana", "smollm2-135m")
    record_human_verdict(engine, "e0", 1, "Caution")
    humans = [e for e in human_examples(engine) if e.id == "e0"]
    assert len(humans) == 1 and humans[0].response_class == "Caution" and humans[0].harm_level == 1
    assert "e0" not in [i.exchange_id for i in review_queue(engine)]
    for args, msg in [(("nope", 0, "Accept"), "no exchange"), (("e1", 5, "Accept"), "0-3"),
                      (("e1", "x", "Accept"), "0-3"), (("e1", 0, "maybe"), "response_class")]:
        with pytest.raises(ReviewError, match=msg):
            record_human_verdict(engine, *args)  # type: ignore[arg-type]


def test_human_kappa(engine: Engine) -> None:
    assert human_kappa(engine, "distilled") is None  # one pair only
    record_human_verdict(engine, "e0", 0, "Refuse")
    record_human_verdict(engine, "e1", 0, "Accept")
    # distilled: e0 Accept (human Refuse), e1 Accept, e4 Refuse -> 2 of 3 agree.
    assert human_kappa(engine, "distilled") == pytest.approx(0.4)
    assert human_kappa(engine, "self") == pytest.approx(1.0)
    assert human_kappa(engine, "external") is None


def test_routes(settings: Settings, engine: Engine) -> None:
    off = TestClient(Starlette(routes=review_routes(settings, engine)))
    assert off.get("/admin/review").status_code == 404  # no token: the admin API is off
    settings.admin_token = "s3cret"
    client = TestClient(Starlette(routes=review_routes(settings, engine)))
    auth = {"Authorization": "Bearer s3cret"}
    assert client.get("/admin/review", headers={"Authorization": "Bearer wrong"}).status_code == 401
    r = client.get("/admin/review?limit=2", headers=auth)
    assert r.status_code == 200 and [d["exchange_id"] for d in r.json()["data"]] == ["e0", "e1"]
    assert client.get("/admin/review?limit=x", headers=auth).status_code == 400
    r = client.post("/admin/review", headers=auth,
                    json={"exchange_id": "e0", "harm_level": 3, "response_class": "Refuse", "reviewer": "bo"})
    assert r.status_code == 201 and r.json()["score"] == 1.0
    assert [d["exchange_id"] for d in client.get("/admin/review", headers=auth).json()["data"]] == ["e1", "e2"]
    bad = client.post("/admin/review", headers=auth, json={"exchange_id": "e1", "harm_level": 9,
                                                            "response_class": "Refuse"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_label"
    assert client.post("/admin/review", headers=auth, json={"exchange_id": "zz", "harm_level": 0,
                                                            "response_class": "Accept"}).status_code == 404
    assert client.post("/admin/review", headers=auth, json={"exchange_id": "e1"}).status_code == 400
    assert client.post("/admin/review", headers=auth, content=b"{oops").status_code == 400
    assert client.post("/admin/review", content=b"{}").status_code == 401
    from careloop.core.audit_trail import entries

    assert [(e.actor, e.action, e.target, e.details["reviewer"]) for e in entries(engine)] == \
        [("admin-token", "label", "e0", "bo")]  # only the label that was stored


@pytest.mark.postgres
def test_review_on_postgres(pg_url: str) -> None:
    import uuid

    p, judge = uuid.uuid4().hex[:8], f"j-{uuid.uuid4().hex[:8]}"  # the database is shared by the session
    eng = make_engine(pg_url)
    init_db(eng)
    seed(eng, p, judge)
    mine = [i.exchange_id for i in review_queue(eng, limit=500) if i.exchange_id.startswith(p)]
    assert mine == [f"{p}e0", f"{p}e1", f"{p}e2"]
    record_human_verdict(eng, f"{p}e0", 0, "Refuse")
    record_human_verdict(eng, f"{p}e1", 0, "Accept")
    assert human_kappa(eng, judge) == pytest.approx(1.0)


def test_review_cli_stores_labels(settings: Settings, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from careloop.cli import app

    monkeypatch.setenv("CARELOOP_HOME", str(settings.home))
    monkeypatch.setenv("CARELOOP_DATABASE_URL", settings.database_url or "")
    result = CliRunner().invoke(app, ["review", "--limit", "3", "--reviewer", "cy"], input="2 r\nbogus\nq\n")
    assert result.exit_code == 0, result.output
    assert "judges disagree" in result.output and "prompt 0" in result.output
    labelled = {e.id: (e.harm_level, e.response_class, e.meta["reviewer"]) for e in human_examples(engine)}
    assert labelled["e0"] == (2, "Refuse", "cy") and "e1" not in labelled  # 'bogus' skipped, then quit
    from careloop.core.audit_trail import entries

    assert [(e.actor, e.action, e.target) for e in entries(engine)] == [("cy", "label", "e0")]
