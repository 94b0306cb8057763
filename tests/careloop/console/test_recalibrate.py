"""Recalibration: held out by prompt, the win rule, the reference pin, accept only a winner, approver only."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from careloop.console import recalibrate
from careloop.core.audit_trail import entries
from careloop.core.settings import Settings
from careloop.monitor.datasets import LabelledExample
from careloop.monitor.judges.distilled_artefacts import READABLE_FORMATS, pinned_version
from tests.careloop.console.conftest import csrf_of

Client = Callable[[str | None], TestClient]


def _ex(i: int, prompt: str) -> LabelledExample:
    return LabelledExample(id=f"e{i}", messages=[{"role": "user", "content": prompt}], response="r",
                           response_class="Accept", harm_level=0, source="store", group="a")


def test_split_holds_out_whole_prompts() -> None:
    examples = [_ex(i, f"Question number {i % 40}?") for i in range(400)]
    examples.append(_ex(999, "  QUESTION number 3?  "))  # the same prompt, spelled differently
    train, heldout = recalibrate.split_by_prompt(examples, 0.3)
    norm = lambda e: " ".join(e.prompt.lower().split())  # noqa: E731
    assert not {norm(e) for e in train} & {norm(e) for e in heldout}
    assert 0.15 < len(heldout) / len(examples) < 0.45 and len(train) + len(heldout) == len(examples)


@pytest.mark.parametrize(("args", "wins"), [
    ((0.46, 0.71, 0.80, 0.79), True),
    ((0.46, 0.71, 0.80, 0.77), False),  # loses 0.03 on XSTest
    ((0.46, 0.46, 0.80, 0.80), False),  # no better on the held-out human labels
    ((None, 0.50, None, 0.70), True),  # nothing to compare with
    ((0.46, None, 0.80, 0.80), False),
])
def test_the_new_version_must_win(args: tuple[float | None, ...], wins: bool) -> None:
    assert recalibrate.decide(*args)[0] is wins


def _artefacts(settings: Settings, *versions: int) -> None:
    for v in versions:
        path = settings.judges_dir / f"distilled-v{v}"
        path.mkdir(parents=True)
        (path / "manifest.json").write_text(json.dumps({"version": v, "format": READABLE_FORMATS[0]}))


def _finished(settings: Settings, wins: bool) -> Path:
    out = recalibrate.recalibration_dir(settings) / "20261202T080000"
    out.mkdir(parents=True)
    (out / "state.json").write_text(json.dumps({"pid": os.getpid() + 10_000_000, "by": "anna",
                                                "started_at": "2026-12-02T08:00:00+00:00"}))
    result = recalibrate.Result(1, 2, 200, 90, 0.46, 0.72 if wins else 0.40, 0.81, 0.80, wins, "measured")
    (out / "result.json").write_text(json.dumps(result.__dict__))
    return out


def test_accept_pins_only_a_winner(settings: Settings) -> None:
    _artefacts(settings, 1, 2)
    assert pinned_version(settings.judges_dir) is None and recalibrate.reference_version(settings.judges_dir) == 2
    recalibrate.pin(settings.judges_dir, 1, "test")
    assert recalibrate.reference_version(settings.judges_dir) == 1
    with pytest.raises(recalibrate.RecalibrationError, match="no finished"):
        recalibrate.accept(settings, "anna")
    out = _finished(settings, wins=False)
    with pytest.raises(recalibrate.RecalibrationError, match="did not win"):
        recalibrate.accept(settings, "anna")
    (out / "result.json").unlink()
    (out / "state.json").unlink()
    out.rmdir()
    _finished(settings, wins=True)
    assert recalibrate.latest(settings)["state"] == "done"  # type: ignore[index]
    assert recalibrate.accept(settings, "anna") == 2
    assert pinned_version(settings.judges_dir) == 2 and recalibrate.latest(settings)["state"] == "accepted"  # type: ignore[index]


def test_a_pin_to_a_missing_version_is_ignored(settings: Settings) -> None:
    _artefacts(settings, 1)
    recalibrate.pin(settings.judges_dir, 7, "test")
    assert pinned_version(settings.judges_dir) is None


def test_console_accepts_a_winner_as_approver_only(client_for: Client, settings: Settings) -> None:
    _artefacts(settings, 1, 2)
    _finished(settings, wins=True)
    rita = client_for("rita")
    page = rita.get("/judges").text
    assert 'id="recal-result"' in page and 'id="accept-recalibration"' not in page
    assert rita.post("/judges/recalibrate/accept", data={"csrf": csrf_of(page), "reason": "x"}).status_code == 403
    anna = client_for("anna")
    page = anna.get("/judges").text
    assert 'id="accept-recalibration"' in page
    r = anna.post("/judges/recalibrate/accept", data={"csrf": csrf_of(page), "reason": "wins on 90 held-out labels"})
    assert r.status_code == 303 and pinned_version(settings.judges_dir) == 2
    e = entries(settings_engine(settings), action="judge_switch")[0]
    assert (e.actor, e.target, e.reason) == ("anna", "distilled-v2", "wins on 90 held-out labels")


def test_a_recalibration_without_labels_fails_visibly(client_for: Client, settings: Settings,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARELOOP_HOME", str(settings.home))
    monkeypatch.setenv("CARELOOP_DATABASE_URL", settings.database_url or "")
    anna = client_for("anna")
    r = anna.post("/judges/recalibrate", data={"csrf": csrf_of(anna.get("/judges").text), "reason": "try"})
    assert r.status_code == 303
    out = Path(recalibrate.latest(settings)["dir"])  # type: ignore[index]
    import time

    deadline = time.monotonic() + 60
    while recalibrate.latest(settings)["state"] == "running" and time.monotonic() < deadline:  # type: ignore[index]
        time.sleep(0.5)
    info = recalibrate.latest(settings)
    assert info is not None and info["state"] == "failed" and "too few human labels" in info["log"]
    assert (out / "error.txt").is_file()
    assert entries(settings_engine(settings), action="recalibrate")[0].actor == "anna"


def settings_engine(settings: Settings):  # type: ignore[no-untyped-def]
    """The store of `settings`."""
    from careloop.core.store import make_engine

    return make_engine(settings.database_url or "")


@pytest.mark.slow
def test_a_real_recalibration_compares_old_and_new_and_keeps_the_old_reference(settings: Settings) -> None:
    """Two small trainings (a baseline, then one with the human labels): about 3 minutes on 2 cores."""
    from careloop.core.migrations import upgrade
    from careloop.core.schema import Exchange
    from careloop.core.store import make_engine, session_scope
    from careloop.monitor.judges.distilled import DistilledJudge
    from careloop.monitor.judges.distilled_train import train_distilled
    from careloop.monitor.review import record_human_verdict
    from tests.monitor.test_judges_distilled import TINY, TINY_SAMPLE

    upgrade(settings.database_url or "")
    engine = make_engine(settings.database_url or "")
    rows = [json.loads(line) for line in (settings.data_dir / "smollm2" / "labelled.jsonl").read_text().splitlines()]
    rows = rows[::2]  # the served model's own labelled replies stand in for people's labels
    with session_scope(engine) as s:
        for r in rows:
            s.add(Exchange(id=r["id"], target="smollm2-135m", sampled=True, response_text=r["response"],
                           request_messages=[{"role": "user", "content": r["prompt"]}]))
    for r in rows:
        record_human_verdict(engine, r["id"], r["harm_level"], r["response_class"], "labelled.jsonl")
    assert train_distilled(settings, TINY, sample=TINY_SAMPLE).version == 1  # the reference before
    out = recalibrate.recalibration_dir(settings) / "t"
    out.mkdir(parents=True)
    result = recalibrate.run(settings, out, TINY, xstest_limit=150, sample=TINY_SAMPLE)
    assert (result.old_version, result.new_version) == (1, 2)
    assert result.n_train + result.n_heldout == len(rows) and result.n_heldout >= recalibrate.MIN_HELDOUT
    for k in (result.human_old, result.human_new, result.xstest_old, result.xstest_new):
        assert k is not None and -1.0 <= k <= 1.0
    assert result.wins is recalibrate.decide(result.human_old, result.human_new, result.xstest_old,
                                             result.xstest_new)[0]
    assert json.loads((out / "result.json").read_text())["new_version"] == 2
    # Not accepted yet: the reference stays v1 though v2 is newer.
    assert DistilledJudge.from_settings(settings, train_if_missing=False).version == "v1"
