"""The run's failure signatures and checkpoint choice, and what a crash or kill of a run leaves behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlmodel import Session, select

from retrain.run import CycleRecord, GainTracker, dpo_skip_reason, reject_reason, select_checkpoint
from service.schema import Adapter, RetrainRun
from service.settings import RetrainSettings, Settings
from service.store import acquire_lease, init_db, lease_holder, make_engine, session_scope

REPO = Path(__file__).resolve().parents[2]


def _cycle(n: int, ss: float, err: float, rejected: str | None = None) -> CycleRecord:
    return CycleRecord(n, {}, None, None, {"safety_score": ss, "err": err}, rejected, f"/c{n}", 0.0)


def test_dpo_is_skipped_when_the_pair_set_is_under_30_percent_of_kto() -> None:
    rs = RetrainSettings()
    assert dpo_skip_reason(29, 100, rs) is not None
    assert dpo_skip_reason(0, 0, rs) is not None
    assert dpo_skip_reason(30, 100, rs) is None
    assert dpo_skip_reason(90, 100, RetrainSettings(dpo_enabled=False)) is not None


def test_checkpoints_with_high_err_or_looping_replies_are_rejected() -> None:
    rs = RetrainSettings()
    assert reject_reason(0.51, 0.0, rs) is not None
    assert reject_reason(0.5, 0.0, rs) is None
    assert reject_reason(0.1, 0.2, rs) is not None
    assert reject_reason(0.1, 0.13, rs, base_degenerate=0.19) is None  # loops less than the base does
    assert reject_reason(0.1, 0.25, rs, base_degenerate=0.19) is not None  # 6 points worse than the base


def test_run_stops_after_three_cycles_without_gain() -> None:
    g = GainTracker(best=0.5, flat_cycles=3, epsilon=0.005)
    assert not g.update(0.6, rejected=False)
    assert not g.update(0.601, rejected=False)  # within epsilon: flat 1
    assert not g.update(0.9, rejected=True)  # rejected checkpoints are no gain: flat 2
    assert g.update(0.55, rejected=False)  # flat 3 → stop


def test_checkpoint_choice_by_overall_metric_under_each_alpha() -> None:
    cycles = [_cycle(1, 0.60, 0.00), _cycle(2, 0.80, 0.20), _cycle(3, 0.99, 0.6, rejected="ERR")]
    assert select_checkpoint(cycles, 0.4) == 1  # 0.64 vs 0.64 → first kept; helpfulness-leaning
    assert select_checkpoint(cycles, 0.8) == 2  # safety-leaning picks the safer one
    assert select_checkpoint([cycles[2]], 0.6) is None


# ------------------------------------------------------------------------------------------ crash and kill
def _hanging_upstream() -> tuple[socket.socket, int]:
    """A TCP server that accepts and never answers: a run waiting on it is stuck mid-flight."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    return srv, srv.getsockname()[1]


def _run_env(settings: Settings, upstream: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"CARELOOP_HOME": str(settings.home), "CARELOOP_DATABASE_URL": settings.database_url or "",
                "CARELOOP_UPSTREAM": upstream, "CARELOOP_MONITOR__REFERENCE_JUDGE": "self",
                "CARELOOP_RETRAIN__HEARTBEAT_S": "0.2", "PYTHONPATH": str(REPO)})
    return env


def _prepare(settings: Settings, embedded: Path | None) -> tuple[object, int]:
    engine = make_engine(settings.database_url or "")
    init_db(engine)
    settings.models_dir.mkdir(parents=True, exist_ok=True)
    if embedded is not None:
        settings.base_model_dir.symlink_to(embedded, target_is_directory=True)
    else:
        settings.base_model_dir.mkdir(parents=True)
    with session_scope(engine) as s:
        run = RetrainRun(status="pending", backend="local")
        s.add(run)
        s.flush()
        run_id = int(run.id)  # type: ignore[arg-type]
    assert acquire_lease(engine, "retrain", "monitor-test", 600)
    return engine, run_id


def _state(engine: object, run_id: int) -> RetrainRun:
    with Session(engine) as s:  # type: ignore[arg-type]
        row = s.get(RetrainRun, run_id)
        assert row is not None
        return row


def test_a_run_that_crashes_is_marked_failed_and_releases_the_lease(settings: Settings) -> None:
    engine, run_id = _prepare(settings, None)
    proc = subprocess.run([sys.executable, "-m", "careloop.cli", "retrain", "--run-id", str(run_id)],
                          env=_run_env(settings, "http://127.0.0.1:9"), cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode != 0
    row = _state(engine, run_id)
    assert row.status == "failed" and row.finished_at is not None and row.error
    assert lease_holder(engine, "retrain") is None  # type: ignore[arg-type]
    with Session(engine) as s:  # type: ignore[arg-type]
        assert s.exec(select(Adapter)).all() == []  # serving untouched: nothing registered


def test_a_killed_run_leaves_serving_untouched_and_the_registry_consistent(settings: Settings) -> None:
    engine, run_id = _prepare(settings, None)
    from service import registry

    registry.register_adapter(engine, "m-safety-v1", "/a/v1", "m", 1)  # type: ignore[arg-type]
    registry.promote(engine, "m-safety-v1")  # type: ignore[arg-type]
    srv, port = _hanging_upstream()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "careloop.cli", "retrain", "--run-id", str(run_id)],
                                env=_run_env(settings, f"http://127.0.0.1:{port}"), cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:  # wait until it is running and beating
            row = _state(engine, run_id)
            if row.status == "running" and row.heartbeat_at is not None and proc.poll() is None:
                first = row.heartbeat_at
                time.sleep(1.0)
                if _state(engine, run_id).heartbeat_at != first:
                    break
            time.sleep(0.2)
        else:
            proc.kill()
            pytest.fail(f"run never started beating: {proc.communicate()[0][-2000:]!r}")
        os.kill(proc.pid, signal.SIGTERM)
        out = proc.communicate(timeout=60)[0]
    finally:
        srv.close()
    assert proc.returncode != 0, out
    row = _state(engine, run_id)
    assert row.status == "failed" and "SystemExit" in (row.error or ""), out
    assert lease_holder(engine, "retrain") is None  # type: ignore[arg-type]
    stable = registry.get_adapter(engine, "m-safety-v1")  # type: ignore[arg-type]
    assert stable is not None and stable.status == "stable"
    assert [a.name for a in registry.list_adapters(engine)] == ["m-safety-v1"]  # type: ignore[arg-type]
