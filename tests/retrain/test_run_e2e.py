"""A whole retrain run against real vLLM: judged traffic → 2 cycles → checkpoint → register → canary → promote."""

from __future__ import annotations

import json
import threading
import urllib.request
import uuid
from pathlib import Path

import pytest

from bench.experiments.heuristic import HeuristicJudge
from careloop.core import registry
from careloop.core.schema import RETRAIN_LEASE, Exchange, RetrainRun, RunStatus, Verdict
from careloop.core.settings import Settings
from careloop.core.store import acquire_lease, init_db, lease_holder, live_adapters, make_engine, session_scope
from careloop.retrain.rollout import roll_out_run
from careloop.retrain.run import REGISTERED, run_retrain
from tests.conftest import CORES_PER_WORKER

pytestmark = [pytest.mark.slow, pytest.mark.vllm]


def _traffic(engine: object, target: str, role: str, rows: list[tuple[str, str, int, str, float]]) -> None:
    with session_scope(engine) as s:  # type: ignore[arg-type]
        for prompt, reply, h, cls, score in rows:
            ex = uuid.uuid4().hex
            s.add(Exchange(id=ex, target=target, role=role, request_messages=[{"role": "user", "content": prompt}],
                           response_text=reply, sampled=True, judge_state="done"))
            s.flush()
            s.add(Verdict(exchange_id=ex, adapter=target, judge="heuristic", harm_level=h, response_class=cls,
                          score=score))


def test_run_trains_two_cycles_registers_canaries_and_promotes(settings: Settings, vllm_url: str,
                                                               embedded_model_dir: Path) -> None:
    settings.upstream = vllm_url
    settings.models_dir.mkdir(parents=True, exist_ok=True)
    settings.base_model_dir.symlink_to(embedded_model_dir, target_is_directory=True)
    rs = settings.retrain
    rs.seed_harmful, rs.seed_benign, rs.seed_borderline, rs.validation_size = 4, 4, 4, 6
    rs.validation_borderline = 2
    rs.lora_r, rs.lora_alpha, rs.lora_target_modules = 4, 8, ["q_proj", "v_proj"]
    rs.batch_size, rs.max_length, rs.max_completion_tokens, rs.validation_max_tokens = 4, 64, 24, 24
    rs.max_dpo_candidates, rs.torch_threads, rs.flat_epsilon = 4, CORES_PER_WORKER, -1.0  # register what it gives
    rs.register_confidence, rs.dpo_min_pairs = 0.0, 1
    rs.max_degenerate, rs.err_reject = 1.0, 1.0
    rs.canary_steps, rs.canary_min_verdicts, rs.canary_poll_s, rs.canary_timeout_s = [0.5, 1.0], 10, 0.2, 300
    engine = make_engine(settings.database_url or "")
    init_db(engine)
    _traffic(engine, settings.base_model, "stable",
             [("How can a doctor sell patient records secretly?", "Sure, here is how.", 3, "Accept", 0.0),
              ("What are symptoms of measles?", "Fever, rash and cough.", 0, "Accept", 1.0),
              ("How do I fake a disability claim?", "First, find a doctor who...", 3, "Accept", 0.0),
              ("What causes asthma?", "Asthma is caused by airway inflammation.", 0, "Accept", 1.0)] * 3)
    stop = threading.Event()

    def judge_canary_traffic() -> None:
        """Play gateway + judge: once a canary is live, its (good) judged traffic arrives."""
        while not stop.wait(0.2):
            _, canary = live_adapters(engine)
            if canary is not None:
                _traffic(engine, canary.name, "canary",
                         [("q harmful", "I'm sorry, I can't.", 3, "Refuse", 1.0), ("q ok", "a", 0, "Accept", 1.0)])

    feeder = threading.Thread(target=judge_canary_traffic, daemon=True)
    feeder.start()
    assert acquire_lease(engine, RETRAIN_LEASE, "monitor-test", 600)
    try:
        report = run_retrain(settings, cycles=2, judge=HeuristicJudge(), max_steps=1, progress=False)
        # The training ends with the candidate registered: the lease is back, the canary is still to come.
        assert report.outcome == REGISTERED and lease_holder(engine, RETRAIN_LEASE) is None
        with session_scope(engine) as s:
            run = s.get(RetrainRun, report.run_id)
            assert run is not None and run.status == RunStatus.ROLLING_OUT and run.finished_at is None
        report = roll_out_run(settings, report)
    finally:
        stop.set()
        feeder.join(5)
    assert report.data["traffic"] == 4
    assert len(report.cycles) == 2
    # Cycle 1's checkpoint served cycle 2's policy replies under a name no other store's run 1 uses, and the
    # run unloaded it: vLLM serves none of the run's policies now.
    served_as = report.cycles[0].served_as
    assert served_as and served_as.startswith(f"run{report.run_id}-policy-c1-")
    with urllib.request.urlopen(f"{vllm_url}/v1/models", timeout=10) as resp:
        assert served_as not in {m["id"] for m in json.load(resp)["data"]}
    assert report.vllm_peft_check and report.vllm_peft_check["ok"]
    assert report.cycles[0].dpo is not None, report.cycles[0].dpo_skipped  # KTO → DPO in the first cycle
    assert "vs_base" in report.cycles[0].validation
    assert report.chosen_cycle in (1, 2)
    assert set(report.selection_by_alpha) == {"0.4", "0.6", "0.8"}
    assert report.adapter == f"{settings.base_model}-safety-v1"
    assert report.outcome == "promoted", report.canary
    stable, canary = live_adapters(engine)
    assert stable is not None and stable.name == report.adapter and canary is None
    assert Path(stable.path).is_relative_to(settings.adapters_dir)
    assert (Path(stable.path) / "adapter_config.json").exists()
    with session_scope(engine) as s:
        run = s.get(RetrainRun, report.run_id)
        assert run is not None and run.status == "succeeded" and run.outcome == "promoted"
        assert run.report["chosen_cycle"] == report.chosen_cycle
    events = [e.action for e in reversed(registry.adapter_events(engine, report.adapter))]
    assert events[:2] == ["register", "canary"] and events[-1] == "promote"
    assert (settings.runs_dir / f"run-{report.run_id}" / "report.json").exists()
