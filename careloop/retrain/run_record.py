"""What a retrain run records: its `retrain_run` row (begun, kept alive by a heartbeat, finished) and its report.

The row moves running → rolling_out (a candidate registered, its canary to follow) → succeeded | failed. The
'retrain' lease covers the training only: the run gives it back (`give_back_lease`) when its training ends.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from careloop.core.schema import RETRAIN_LEASE, RetrainRun, RunStatus, utcnow
from careloop.core.settings import Settings
from careloop.core.store import lease_holder, release_lease, session_scope
from careloop.retrain.checkpoints import CycleRecord

log = logging.getLogger("careloop.retrain")


class RunError(RuntimeError):
    """A run that cannot go on (bad state, nothing to train on, vLLM serving the adapter wrongly)."""


@dataclass
class RunReport:
    """Everything a run did (stored as retrain_run.report and report.json in the run folder)."""

    run_id: int
    started_at: str
    base_target: str
    data: dict[str, Any] = field(default_factory=dict)
    baseline: dict[str, Any] = field(default_factory=dict)
    cycles: list[CycleRecord] = field(default_factory=list)
    chosen_cycle: int | None = None
    selection_by_alpha: dict[str, int | None] = field(default_factory=dict)
    stop_reason: str = ""
    adapter: str | None = None
    canary: dict[str, Any] | None = None
    outcome: str = ""
    wall_s: float = 0.0
    vllm_peft_check: dict[str, Any] | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    judge: str = ""  # the judge whose verdicts trained the candidate and decide its canary

    def as_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return asdict(self)

    def write(self, run_dir: Path) -> None:
        """Write the report as report.json in the run folder."""
        (run_dir / "report.json").write_text(json.dumps(self.as_dict(), indent=2, default=str))


class Heartbeat:
    """Marks the run alive every few seconds from a thread (the supervisor fails runs that go quiet)."""

    def __init__(self, engine: Engine, run_id: int, every_s: float) -> None:
        self.engine, self.run_id, self.every_s = engine, run_id, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="retrain-heartbeat", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                update_run(self.engine, self.run_id, heartbeat_at=utcnow())
            except Exception as exc:  # a store hiccup must not kill training
                log.warning("heartbeat failed: %s", exc)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def update_run(engine: Engine, run_id: int, **fields: Any) -> None:
    """Set fields of the run's row (nothing when the row is gone)."""
    with session_scope(engine) as s:
        row = s.get(RetrainRun, run_id)
        if row is None:
            return
        for k, v in fields.items():
            setattr(row, k, v)
        s.add(row)


def begin_run(engine: Engine, settings: Settings, run_id: int | None, base_target: str) -> int:
    """Mark a recorded run as running (or record a new one started by hand); returns its id."""
    with session_scope(engine) as s:
        if run_id is None:
            row = RetrainRun(status=RunStatus.RUNNING, backend="local", started_at=utcnow(), heartbeat_at=utcnow(),
                             handle=str(os.getpid()), base_adapter=base_target)
            s.add(row)
            s.flush()
            return int(row.id)  # type: ignore[arg-type]
        found = s.get(RetrainRun, run_id)
        if found is None:
            raise RunError(f"no retrain run {run_id}")
        if found.status not in (RunStatus.REQUESTED, RunStatus.PENDING, RunStatus.RUNNING):
            raise RunError(f"retrain run {run_id} is {found.status}; only a pending or running run can run")
        found.status, found.heartbeat_at = RunStatus.RUNNING, utcnow()
        found.started_at = found.started_at or utcnow()
        found.base_adapter = found.base_adapter or base_target
        s.add(found)
        return run_id


def finish_run(engine: Engine, run_id: int, *, status: RunStatus, outcome: str | None,
               report: dict[str, Any] | None, error: str | None, adapter: str | None = None) -> None:
    """Record how the run ended, or how its training did (status rolling_out: its canary follows)."""
    fields: dict[str, Any] = {"status": status, "outcome": outcome}
    if status != RunStatus.ROLLING_OUT:
        fields["finished_at"] = utcnow()
    if report is not None:
        fields["report"] = report
    if error is not None:
        fields["error"] = error[-4000:]
    if adapter is not None:
        fields["adapter_name"] = adapter
    update_run(engine, run_id, **fields)


def give_back_lease(engine: Engine) -> None:
    """Release the 'retrain' lease, whoever took it for this run: the training it covers has ended."""
    holder = lease_holder(engine, RETRAIN_LEASE)
    if holder is not None:
        release_lease(engine, RETRAIN_LEASE, holder)
