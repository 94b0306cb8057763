"""End to end: `careloop monitor` (a real process) on a real store with the real distilled judge.

Traffic is replayed from the vendored data as the gateway logs it. First a well-behaved assistant: MedQuAD
questions with their reference answers, MedSafetyBench's harmful requests with their written safe responses.
Then the served model drifts into one that answers harmful prompts: the real SmolLM2-135M on vLLM answering
MedSafetyBench requests it should refuse. The safety window breaches, a retrain run is recorded and started
once — not twice (the run in progress, then the cooldown, hold the rest back)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlmodel import Session, select

from careloop.core.schema import RetrainRun, TriggerEvent
from careloop.core.settings import REPO_ROOT, Settings
from tests.conftest import free_port
from tests.monitor._monitor_fixtures import add_exchanges, exchange_row, store

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

def _jsonl(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (REPO_ROOT / "data" / name).open()]


def good_traffic(n_each: int) -> list[tuple[str, str]]:
    """Harmless questions answered, harmful requests refused (real vendored texts)."""
    medquad = [(r["prompt"], r["answer"]) for r in _jsonl("medquad/questions.jsonl") if r.get("answer")]
    refusals = [(r["prompt"], r["safe_response"]) for r in _jsonl("medsafetybench/train.jsonl")]
    return [pair for duo in zip(medquad[-n_each:], refusals[-n_each:], strict=True) for pair in duo]


async def _complying_replies(vllm_url: str, model: str, n: int) -> list[tuple[str, str]]:
    """The real embedded model answering MedSafetyBench's harmful requests (it mostly complies)."""
    prompts = [r["prompt"] for r in _jsonl("medsafetybench/train.jsonl")][-(100 + n):-100]
    sem = asyncio.Semaphore(16)

    async def one(client: httpx.AsyncClient, prompt: str) -> tuple[str, str]:
        async with sem:
            resp = await client.post(f"{vllm_url}/v1/chat/completions", json={
                "model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 32,
                "temperature": 0})
            resp.raise_for_status()
            return prompt, resp.json()["choices"][0]["message"]["content"]

    async with httpx.AsyncClient(timeout=600) as client:
        return list(await asyncio.gather(*(one(client, p) for p in prompts)))


def _events(engine: Any) -> list[TriggerEvent]:
    with Session(engine) as s:
        return list(s.exec(select(TriggerEvent).order_by(TriggerEvent.id)).all())  # type: ignore[arg-type]


def _runs(engine: Any) -> list[RetrainRun]:
    with Session(engine) as s:
        return list(s.exec(select(RetrainRun).order_by(RetrainRun.id)).all())  # type: ignore[arg-type]


def _wait(predicate: Any, timeout: float, what: str, proc: subprocess.Popen[bytes], log: Path) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"careloop monitor exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        got = predicate()
        if got:
            return got
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()[-3000:]}")


def test_a_model_that_answers_harmful_prompts_triggers_one_retrain(settings: Settings, tmp_path: Path,
                                                                   distilled_judges_dir: Path, vllm_url: str) -> None:
    drift = asyncio.run(_complying_replies(vllm_url, settings.base_model, 120))
    settings.judges_dir.rmdir()
    settings.judges_dir.symlink_to(distilled_judges_dir, target_is_directory=True)
    engine = store(settings.database_url or "")
    port = free_port()
    marker = tmp_path / "retrain-ran"
    env = {
        **os.environ,
        "CARELOOP_HOME": str(settings.home), "CARELOOP_DATABASE_URL": settings.database_url or "",
        "CARELOOP_MONITOR__PORT": str(port), "CARELOOP_MONITOR__JUDGES": '["distilled"]',
        "CARELOOP_MONITOR__REFERENCE_JUDGE": "distilled",
        "CARELOOP_MONITOR__WINDOW_COUNT": "100", "CARELOOP_MONITOR__MIN_SAMPLES": "40",
        # This test is about the safety rules; the baseline traffic's ERR (the judge calls some written
        # refusals of harm-0-looking prompts erroneous) must not start the one run before the drift does.
        "CARELOOP_MONITOR__ERR_CEILING": "0.5",
        "CARELOOP_MONITOR__JUDGE_INTERVAL_S": "0.5", "CARELOOP_MONITOR__METRICS_INTERVAL_S": "0.5",
        "CARELOOP_MONITOR__TRIGGER_INTERVAL_S": "0.5", "CARELOOP_MONITOR__LAUNCHER_INTERVAL_S": "0.5",
        "CARELOOP_MONITOR__RETRAIN_COMMAND": json.dumps(
            [sys.executable, "-c", f"import sys; open({str(marker)!r}, 'a').write(sys.argv[1] + '\\n')",
             "{run_id}"]),
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
    }
    log = tmp_path / "monitor.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "careloop.cli", "monitor", "--status-every", "2"],
                                env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        def healthy() -> bool:
            try:
                return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        _wait(healthy, 240, "the monitor to start", proc, log)
        # 1. A model that refuses unsafe prompts and answers safe ones.
        good = good_traffic(30)
        add_exchanges(engine, [exchange_row(p, r, target=settings.base_model) for p, r in good])

        def baseline() -> list[TriggerEvent]:
            return [e for e in _events(engine) if e.kind == "baseline"]

        base = _wait(baseline, 120, "the baseline window", proc, log)[0]
        assert base.figures["n"] >= 40 and base.figures["safety_score"] > 0.7
        assert not [e for e in _events(engine) if e.kind == "breach"]
        # 2. The served model drifts: it now complies with harmful prompts.
        add_exchanges(engine, [exchange_row(p, r, target=settings.base_model) for p, r in drift[:100]])

        def run_finished() -> list[RetrainRun]:
            return [r for r in _runs(engine) if r.status == "succeeded"]

        _wait(run_finished, 180, "the retrain run", proc, log)
        time.sleep(3)  # several more trigger rounds on the still-breached window
        # 3. More harmful compliance while the cooldown holds: still no second run.
        add_exchanges(engine, [exchange_row(p, r, target=settings.base_model) for p, r in drift[100:]])
        _wait(lambda: httpx.get(f"{url}/healthz", timeout=2).json()["queue_depth"] == 0, 60,
              "the queue to drain", proc, log)
        time.sleep(2)
        events = _events(engine)
        runs = _runs(engine)
        assert len(runs) == 1, [(r.id, r.status) for r in runs]
        assert marker.read_text().split() == [str(runs[0].id)]  # the launcher ran the command once
        started = [e for e in events if e.kind == "retrain_started"]
        assert len(started) == 1 and started[0].retrain_run_id == runs[0].id
        assert runs[0].trigger_event_id == started[0].id
        assert started[0].rule in ("safety_floor", "safety_drop")
        breach = [e for e in events if e.kind == "breach" and e.rule == started[0].rule]
        assert len(breach) == 1
        assert breach[0].figures["safety_score"] < breach[0].figures["threshold"]
        assert breach[0].figures["n"] >= 40
        assert breach[0].adapter == settings.base_model and breach[0].judge == "distilled"
        assert any(e.kind == "suppressed" and "cooldown" in e.decision for e in events)
        text = httpx.get(f"{url}/metrics", timeout=5).text
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for fam in text_string_to_metric_families(text) for s in fam.samples}
        ss = samples[("careloop_safety_score", (("adapter", settings.base_model), ("judge", "distilled"),
                                                ("window", "count")))]
        assert ss < 0.7
        assert samples[("careloop_retrain_runs_total", (("outcome", "succeeded"),))] == 1
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        engine.dispose()
