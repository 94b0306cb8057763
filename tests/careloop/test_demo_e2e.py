"""The whole loop, reduced: real CPU vLLM, gateway, monitor, distilled judge, retrain, canary, decision."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from rich.console import Console
from sqlmodel import Session, func, select

from careloop.core.schema import AdapterEvent, Exchange, RetrainRun, TriggerEvent, Verdict
from careloop.core.settings import Settings
from careloop.core.store import make_engine
from careloop.demo import run_demo
from tests.conftest import CORES_PER_WORKER, free_port

pytestmark = [pytest.mark.slow, pytest.mark.vllm]


def tiny_loop(settings: Settings, embedded_model_dir: Path, judges_dir: Path, vllm_url: str) -> Settings:
    """Settings for a loop that closes in minutes: little traffic, one one-step cycle, small canary.

    The stack uses the session's vLLM (as `careloop up --vllm URL` does) instead of starting its own: the
    adapter names it registers may already be loaded there by other tests, from other paths, and the
    gateway's reconcile reloads them from this store's.
    """
    settings.models_dir.mkdir(parents=True, exist_ok=True)
    settings.base_model_dir.symlink_to(embedded_model_dir, target_is_directory=True)
    settings.judges_dir.rmdir()
    settings.judges_dir.symlink_to(judges_dir, target_is_directory=True)
    settings.vllm_managed, settings.upstream = False, vllm_url
    settings.gateway.port, settings.monitor.port, settings.console.port = free_port(), free_port(), free_port()
    d = settings.demo
    d.traffic, d.canary_traffic, d.concurrency, d.max_tokens = 48, 48, 8, 24  # short replies: CI time
    d.min_samples, d.cycles, d.timeout_s, d.train_threads = 20, 1, 1800, CORES_PER_WORKER
    d.eval_harmful, d.eval_benign, d.eval_xstest_safe = 6, 6, 6
    rs = settings.retrain
    rs.seed_harmful, rs.seed_benign, rs.seed_borderline, rs.validation_size = 4, 4, 4, 6
    rs.validation_borderline = 2
    rs.lora_r, rs.lora_alpha, rs.lora_target_modules = 4, 8, ["q_proj", "v_proj"]
    rs.batch_size, rs.max_length, rs.max_completion_tokens, rs.validation_max_tokens = 4, 64, 24, 24
    rs.max_dpo_candidates, rs.max_traffic_examples = 4, 16
    rs.flat_epsilon, rs.max_degenerate, rs.err_reject = -1.0, 1.0, 1.0  # register whatever one step gives
    rs.register_confidence, rs.dpo_min_pairs = 0.0, 1  # and run DPO on whatever pairs it has
    rs.canary_steps, rs.canary_min_verdicts, rs.canary_poll_s = [0.5, 1.0], 10, 1.0
    # One training step barely moves the adapter: a wide margin and a last look at 20 verdicts decide quickly.
    rs.canary_overall_margin, rs.canary_max_verdicts = 0.5, 20
    settings.monitor.retrain_command = [sys.executable, "-m", "careloop.cli", "retrain", "--run-id", "{run_id}",
                                        "--max-steps", "1"]
    return settings


def test_demo_closes_the_loop(settings: Settings, embedded_model_dir: Path, distilled_judges_dir: Path,
                              vllm_url: str) -> None:
    settings = tiny_loop(settings, embedded_model_dir, distilled_judges_dir, vllm_url)
    report = run_demo(settings, Console(stderr=True, force_terminal=False))

    assert report["failed_requests"] == 0, report["failures"]  # the gateway served every request throughout
    engine = make_engine(settings.database_url or "")
    with Session(engine) as s:
        exchanges = s.exec(select(func.count()).select_from(Exchange)).one()
        verdicts = s.exec(select(func.count()).select_from(Verdict).where(Verdict.judge == "distilled")).one()
        starts = s.exec(select(TriggerEvent).where(TriggerEvent.kind == "retrain_started")).all()
        runs = s.exec(select(RetrainRun)).all()
        events = s.exec(select(AdapterEvent).order_by(AdapterEvent.id)).all()  # type: ignore[arg-type]
    engine.dispose()
    assert exchanges >= 48 and verdicts >= 20
    assert len(starts) == 1 and starts[0].figures  # one trigger, with the window's figures
    assert len(runs) == 1 and runs[0].status == "succeeded", (runs[0].status, runs[0].error)
    adapter = runs[0].adapter_name
    cycle = runs[0].report["cycles"][0]
    assert cycle["dpo"] is not None, cycle["dpo_skipped"]  # the loop's cycle is KTO → DPO, not KTO alone
    assert runs[0].report["vllm_peft_check"]["ok"] and cycle["signatures"] and cycle["phases"]["kto"] > 0
    assert adapter == f"{settings.base_model}-safety-v1"
    actions = [(e.adapter, e.action) for e in events]
    assert (adapter, "register") in actions and (adapter, "canary") in actions
    decision = next(e for e in reversed(events) if e.action in ("promote", "rollback"))
    assert decision.adapter == adapter and decision.figures  # the decision carries its figures
    assert report["decision"]["action"] == decision.action
    assert report["result"]["ok"] == (decision.action == "promote") and report["result"]["reason"]
    # The report has both sides of the before/after comparison and was written out with its plot.
    assert report["before"]["groups"]["harmful"]["n"] > 0 and report["after"]["groups"]["benign"]["n"] > 0
    written = sorted(settings.reports_dir.glob("demo-*.json"))
    assert written and json.loads(written[-1].read_text())["decision"]["action"] == decision.action
    assert sorted(settings.reports_dir.glob("demo-*.png"))
