"""The retrain supervisor: the rules every run start obeys, whoever asked, and the watch over started runs.

Whoever asks (a trigger, or an operator through the gateway's `POST /admin/retrain`, which inserts a
`retrain_run` row with status 'requested'), at most one run is started at a time (until its canary ends) and a
cooldown follows each run. A run trains under the store lease "retrain" (so the rule holds across replicas):
the supervisor takes it to start the run and renews it while the run trains; the run gives it back when its
training ends. The supervisor also marks runs whose process died, or that went quiet, as failed.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from careloop.core.schema import (
    FINISHED_RUN_STATES,
    RETRAIN_LEASE,
    STARTED_RUN_STATES,
    TRAINING_RUN_STATES,
    RetrainRun,
    RunStatus,
    TriggerEvent,
    utcnow,
)
from careloop.core.settings import Settings
from careloop.core.store import acquire_lease, lease_holder, release_lease, session_scope
from careloop.monitor.launcher import Launcher, make_launcher
from careloop.monitor.metrics import MonitorMetrics

log = logging.getLogger("careloop.monitor.supervisor")


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


class RetrainSupervisor:
    """Starts runs under the lease and cooldown rules, watches them and records how they end."""

    def __init__(self, engine: Engine, launcher: Launcher, *, holder: str, cooldown_s: float,
                 lease_ttl_s: float = 900.0, stale_s: float = 1800.0, metrics: MonitorMetrics | None = None,
                 base_adapter: str | None = None) -> None:
        self.engine = engine
        self.launcher = launcher
        self.holder = holder
        self.cooldown_s = cooldown_s
        self.lease_ttl_s = lease_ttl_s
        self.stale_s = stale_s
        self.metrics = metrics
        self.base_adapter = base_adapter
        self._suppressed_requests: dict[int, str] = {}
        self._watching: dict[int, str | None] = {}  # active run id → handle, to notice runs that end on their own
        self._counted: set[int] = set()

    @classmethod
    def from_settings(cls, engine: Engine, settings: Settings, holder: str, metrics: MonitorMetrics | None = None,
                      launcher: Launcher | None = None) -> RetrainSupervisor:
        """A supervisor configured by `settings.monitor`."""
        m = settings.monitor
        return cls(engine, launcher or make_launcher(settings), holder=holder, cooldown_s=m.cooldown_s,
                   lease_ttl_s=m.retrain_lease_ttl_s, stale_s=m.retrain_stale_s, metrics=metrics,
                   base_adapter=settings.base_model)

    # Rules.
    def active_runs(self) -> list[RetrainRun]:
        """Runs started and not finished: pending, running (training) or rolling out (their canary)."""
        with Session(self.engine) as s:
            return list(s.exec(select(RetrainRun).where(RetrainRun.status.in_(STARTED_RUN_STATES))  # type: ignore[attr-defined]
                               .order_by(RetrainRun.id)).all())  # type: ignore[arg-type]

    def cooldown_until(self) -> datetime | None:
        """When the cooldown after the last finished run ends (None: no cooldown)."""
        with Session(self.engine) as s:
            last = s.exec(select(func.max(RetrainRun.finished_at)).where(
                RetrainRun.status.in_(FINISHED_RUN_STATES), RetrainRun.started_at.is_not(None))).one()  # type: ignore[attr-defined,union-attr]
        last = _aware(last)
        return None if last is None else last + timedelta(seconds=self.cooldown_s)

    def blocked(self, now: datetime | None = None) -> str | None:
        """Why a run cannot start now ('in_progress: …', 'cooldown: …', 'lease: …'), or None."""
        now = now or utcnow()
        active = self.active_runs()
        if active:
            return f"in_progress: retrain run {active[0].id} is {active[0].status}"
        until = self.cooldown_until()
        if until is not None and until > now:
            return f"cooldown: until {until.isoformat(timespec='seconds')}"
        holder = lease_holder(self.engine, RETRAIN_LEASE)
        if holder is not None and holder != self.holder:
            return f"lease: held by {holder}"
        return None

    # Starting.
    def start(self, *, trigger_event_id: int | None = None, base_adapter: str | None = None,
              run: RetrainRun | None = None) -> tuple[RetrainRun | None, str | None]:
        """Start a run (a new one, or a requested row) if the rules allow; returns (run, why-not)."""
        why = self.blocked()
        if why:
            return None, why
        if not acquire_lease(self.engine, RETRAIN_LEASE, self.holder, self.lease_ttl_s):
            return None, f"lease: held by {lease_holder(self.engine, RETRAIN_LEASE)}"
        # Re-check under the lease: another replica may have started one between our check and the lease.
        active = self.active_runs()
        if active:
            return None, f"in_progress: retrain run {active[0].id} is {active[0].status}"
        with session_scope(self.engine) as s:
            if run is None:
                run = RetrainRun(status=RunStatus.PENDING, trigger_event_id=trigger_event_id,
                                 backend=self.launcher.backend, base_adapter=base_adapter or self.base_adapter)
            else:
                run = s.get(RetrainRun, run.id)
                if run is None or run.status != RunStatus.REQUESTED:
                    release_lease(self.engine, RETRAIN_LEASE, self.holder)
                    return None, "request no longer pending"
                run.status, run.backend = RunStatus.PENDING, self.launcher.backend
                if trigger_event_id is not None:
                    run.trigger_event_id = trigger_event_id
            s.add(run)
            s.flush()
            run_id = int(run.id)  # type: ignore[arg-type]
        try:
            handle = self.launcher.start(run_id)
        except Exception as exc:
            self._finish(run_id, RunStatus.FAILED, error=f"launch failed: {exc}")
            release_lease(self.engine, RETRAIN_LEASE, self.holder)
            return None, f"launch failed: {exc}"
        now = utcnow()
        with session_scope(self.engine) as s:
            row = s.get(RetrainRun, run_id)
            assert row is not None
            if row.status == RunStatus.PENDING:  # the run itself may already have moved on
                row.status = RunStatus.RUNNING
            row.started_at = row.started_at or now
            row.heartbeat_at = row.heartbeat_at or now
            row.handle = handle
            s.add(row)
            run = row
        self._watching[run_id] = handle
        if self.metrics is not None:
            self.metrics.retrain_in_progress.set(1)
        log.info("retrain run %d started (%s %s)", run_id, self.launcher.backend, handle)
        return run, None

    def _finish(self, run_id: int, status: RunStatus, error: str | None = None) -> RetrainRun | None:
        with session_scope(self.engine) as s:
            row = s.get(RetrainRun, run_id)
            if row is None:
                return None
            if row.status not in FINISHED_RUN_STATES:
                row.status = status
                if error and not row.error:
                    row.error = error
            row.finished_at = row.finished_at or utcnow()
            s.add(row)
        self._count(row)
        return row

    def _count(self, row: RetrainRun) -> None:
        """Count a finished run's outcome once."""
        if row.id is None or row.id in self._counted:
            return
        self._counted.add(row.id)
        self._watching.pop(row.id, None)
        if self.metrics is not None:
            self.metrics.retrain_runs.labels(outcome=row.outcome or row.status).inc()

    # Watching.
    def tick(self) -> list[str]:
        """Watch active runs, then start requested ones the rules allow; returns what happened."""
        notes: list[str] = []
        now = utcnow()
        active = self.active_runs()
        ended = set(self._watching) - {r.id for r in active}
        for run_id in ended:  # the run wrote its own final status: count it, reap its process
            handle = self._watching.get(run_id)
            if handle:
                self.launcher.poll(handle)
            with Session(self.engine) as s:
                row = s.get(RetrainRun, run_id)
            if row is not None and row.status in FINISHED_RUN_STATES:
                self._count(row)
            else:
                self._watching.pop(run_id, None)
        for run in active:
            assert run.id is not None
            self._watching[run.id] = run.handle
            state = self.launcher.poll(run.handle) if run.handle and run.backend == self.launcher.backend else None
            if state is None:
                beat = _aware(run.heartbeat_at or run.started_at or run.created_at)
                if beat is not None and (now - beat).total_seconds() > self.stale_s:
                    self._finish(run.id, RunStatus.FAILED, error=f"no heartbeat for {self.stale_s:.0f} s")
                    release_lease(self.engine, RETRAIN_LEASE, self.holder)
                    notes.append(f"run {run.id} failed: stale")
                continue
            if state.alive:
                if run.status in TRAINING_RUN_STATES:  # the lease covers the training, not the canary
                    acquire_lease(self.engine, RETRAIN_LEASE, self.holder, self.lease_ttl_s)
                continue
            status = RunStatus.SUCCEEDED if state.returncode == 0 else RunStatus.FAILED
            row = self._finish(run.id, status, error=None if status == RunStatus.SUCCEEDED else state.detail)
            release_lease(self.engine, RETRAIN_LEASE, self.holder)
            notes.append(f"run {run.id} {row.status if row else status} ({state.detail})")
        notes.extend(self._start_requested())
        still_active = self.active_runs()
        training = [r for r in still_active if r.status in TRAINING_RUN_STATES]
        if not training and lease_holder(self.engine, RETRAIN_LEASE) == self.holder:
            release_lease(self.engine, RETRAIN_LEASE, self.holder)  # nothing trains: never keep the lease
        if self.metrics is not None:
            self.metrics.retrain_in_progress.set(1 if still_active else 0)
        return notes

    def _start_requested(self) -> list[str]:
        notes: list[str] = []
        with Session(self.engine) as s:
            requested = list(s.exec(select(RetrainRun).where(RetrainRun.status == RunStatus.REQUESTED)
                                    .order_by(RetrainRun.id)).all())  # type: ignore[arg-type]
        for req in requested:
            assert req.id is not None
            run, why = self.start(run=req)
            if run is not None:
                record_event(self.engine, rule="operator", kind="retrain_started", adapter=req.base_adapter,
                             decision=f"started requested retrain run {run.id}", retrain_run_id=run.id)
                notes.append(f"run {run.id} started (requested)")
                break
            if why and self._suppressed_requests.get(req.id) != why.split(":")[0]:
                self._suppressed_requests[req.id] = why.split(":")[0]
                record_event(self.engine, rule="operator", kind="suppressed", adapter=req.base_adapter,
                             decision=f"requested retrain run {req.id} waits: {why}", retrain_run_id=req.id)
            break  # one at a time: later requests wait behind the first
        return notes


def record_event(engine: Engine, *, rule: str, kind: str, decision: str, adapter: str | None = None,
                 judge: str | None = None, figures: dict[str, Any] | None = None,
                 retrain_run_id: int | None = None) -> int:
    """Write a trigger_event row; returns its id."""
    with session_scope(engine) as s:
        event = TriggerEvent(rule=rule, kind=kind, decision=decision, adapter=adapter, judge=judge,
                             figures=figures or {}, retrain_run_id=retrain_run_id)
        s.add(event)
        s.flush()
        return int(event.id)  # type: ignore[arg-type]
