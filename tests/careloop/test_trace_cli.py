"""`careloop trace REQUEST_ID`: an exchange's story from the store, through its verdicts to the triggers it fed."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from typer.testing import CliRunner

from careloop.cli import app
from careloop.core.migrations import upgrade
from careloop.core.schema import Exchange, TriggerEvent, Verdict, utcnow
from careloop.core.settings import Settings
from careloop.core.store import make_engine, session_scope


def _verdict(ex_id: str, judge: str = "distilled", **kw: object) -> Verdict:
    return Verdict(exchange_id=ex_id, adapter="smollm2-135m", judge=judge, harm_level=2,
                   response_class="Accept", score=0.0, **kw)


def test_trace_tells_the_whole_story(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    url = settings.database_url or ""
    upgrade(url)
    engine = make_engine(url)
    settings.monitor.window_count = 3
    now = utcnow()
    with session_scope(engine) as s:
        s.add(Exchange(id="ex-traced", request_id="clinic-req-9", trace_id="ab" * 16, key_name="ward-app",
                       target="smollm2-135m", request_messages=[{"role": "user", "content": "dose [MRN]?"}],
                       response_text="Take it.", status=200, sampled=True, judge_state="done"))
        s.add(Exchange(id="ex-other", target="smollm2-135m"))
    with session_scope(engine) as s:
        mine = _verdict("ex-traced", created_at=now - timedelta(seconds=10))
        s.add(mine)
        s.flush()
        vid = mine.id
        for _ in range(3):  # three newer verdicts push it out of a count window of 3
            s.add(_verdict("ex-other"))
        s.add(_verdict("ex-traced", judge="self"))
        assert vid is not None
        s.add(TriggerEvent(rule="safety_floor", adapter="smollm2-135m", judge="distilled", kind="breach",
                           decision="retrain", retrain_run_id=4, figures={"window": "count", "n": 50,
                           "first_verdict_id": vid, "last_verdict_id": vid + 3}))
        s.add(TriggerEvent(rule="safety_floor", adapter="smollm2-135m", judge="distilled", kind="recovered",
                           figures={"first_verdict_id": vid + 1, "last_verdict_id": vid + 3}))
        s.add(TriggerEvent(rule="err_ceiling", adapter="smollm2-135m", judge="self", kind="breach",
                           figures={"first_verdict_id": vid - 5, "last_verdict_id": vid + 1}))
    engine.dispose()
    monkeypatch.setenv("CARELOOP_DATABASE_URL", url)
    monkeypatch.setenv("CARELOOP_MONITOR__WINDOW_COUNT", "3")
    out = CliRunner().invoke(app, ["trace", "clinic-req-9", "--json"])
    assert out.exit_code == 0, out.output
    (story,) = json.loads(out.stdout)
    assert story["exchange_id"] == "ex-traced" and story["client_key"] == "ward-app"
    assert story["target"] == "smollm2-135m" and story["request"]["messages"][0]["content"] == "dose [MRN]?"
    distilled, self_v = story["verdicts"]
    assert distilled["judge"] == "distilled" and self_v["judge"] == "self"
    assert distilled["windows"]["count"] == {"inside": False, "newer_verdicts": 3, "size": 3}
    assert distilled["windows"]["time"]["inside"]
    assert [t["kind"] for t in distilled["triggers"]] == ["breach"]  # not the one whose window began later
    assert distilled["triggers"][0]["retrain_run_id"] == 4
    assert self_v["windows"]["count"]["inside"] and self_v["triggers"] == []  # the self breach predates it
    text = CliRunner().invoke(app, ["trace", "clinic-req-9"])
    assert text.exit_code == 0 and "fed trigger" in text.stdout and "ward-app" in text.stdout
    missing = CliRunner().invoke(app, ["trace", "no-such-request"])
    assert missing.exit_code == 1
