"""The monitor process: judge worker, rolling windows, triggers and retrain launcher on an APScheduler, plus
the HTTP server with /metrics and /healthz."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import text
from sqlalchemy.engine import Engine

from careloop.core import telemetry
from careloop.core.settings import Settings
from careloop.core.store import acquire_lease, make_engine
from careloop.monitor.judges.base import Judge
from careloop.monitor.launcher import Launcher
from careloop.monitor.metrics import MonitorMetrics
from careloop.monitor.supervisor import RetrainSupervisor
from careloop.monitor.triggers import TriggerEngine
from careloop.monitor.windows import WindowSet
from careloop.monitor.worker import CycleReport, JudgeWorker, new_worker_id, queue_depth

log = logging.getLogger("careloop.monitor")
T = TypeVar("T")


class _NotThisReplica(Exception):
    """Another replica holds the job's lease: nothing to do, and not counted as a run."""


def build_judges(settings: Settings) -> dict[str, Judge]:
    """The configured judges (the reference judge always among them), built by the judges package."""
    from careloop.monitor.judges import build_judge

    names = list(dict.fromkeys([*settings.monitor.judges, settings.monitor.reference_judge]))
    return {name: build_judge(name, settings) for name in names}


@dataclass
class JobStat:
    """The last run of a scheduled job."""

    runs: int = 0
    errors: int = 0
    last_s: float = 0.0
    last_error: str | None = None
    last_at: float | None = None


@dataclass
class MonitorService:
    """Every part of the monitor, wired together; the scheduler calls its `*_job` methods."""

    settings: Settings
    engine: Engine
    judges: Mapping[str, Judge]
    metrics: MonitorMetrics
    windows: WindowSet
    worker: JudgeWorker
    supervisor: RetrainSupervisor
    triggers: TriggerEngine
    holder: str
    stats: dict[str, JobStat] = field(default_factory=dict)
    started: bool = False
    queue: int = 0
    human_kappa_every_s: float = 60.0  # κ against the human labels reads every label: not on each tick
    _human_at: float = float("-inf")
    http_server: Any = None  # the uvicorn server while `serve` runs

    def request_stop(self) -> None:
        """Ask a running `serve` to shut down (from any thread)."""
        if self.http_server is not None:
            self.http_server.should_exit = True

    @classmethod
    def create(cls, settings: Settings, *, engine: Engine | None = None, judges: Mapping[str, Judge] | None = None,
               metrics: MonitorMetrics | None = None, launcher: Launcher | None = None,
               stable_adapter: Callable[[], str] | None = None) -> MonitorService:
        """Build the parts from settings (judges built by the judges package unless given)."""
        engine = engine or make_engine(settings.database_url or "")
        metrics = metrics or MonitorMetrics()
        judges = dict(judges) if judges is not None else build_judges(settings)
        holder = new_worker_id()
        windows = WindowSet.from_settings(engine, settings)
        metrics.attach_windows(windows)
        metrics.set_judges(judges, settings.monitor.reference_judge)
        worker = JudgeWorker.from_settings(engine, judges, settings, metrics)
        worker.worker_id = holder
        supervisor = RetrainSupervisor.from_settings(engine, settings, holder, metrics, launcher)
        triggers = TriggerEngine(engine, settings, windows, supervisor, holder=holder, metrics=metrics,
                                 stable_adapter=stable_adapter)
        return cls(settings, engine, judges, metrics, windows, worker, supervisor, triggers, holder)

    def start(self) -> int:
        """Load the windows from the store (only what they need); returns how many verdicts were read."""
        n = self.windows.load()
        self.started = True
        return n

    def _timed(self, name: str, seconds: float, error: BaseException | None = None) -> None:
        if telemetry.enabled():  # a root span per job run (issue 23)
            end = time.time_ns()
            telemetry.record_span(f"monitor {name}", end - int(seconds * 1e9), end, {"careloop.job": name},
                                  error=f"{type(error).__name__}: {error}" if error else None)
        stat = self.stats.setdefault(name, JobStat())
        stat.runs += 1
        stat.last_s = seconds
        stat.last_at = time.time()
        if error is not None:
            stat.errors += 1
            stat.last_error = f"{type(error).__name__}: {error}"
        self.metrics.cycle_seconds.labels(job=name).set(seconds)

    async def judge_job(self, max_batches: int = 20) -> CycleReport:
        """Grade pending exchanges: batches until the queue is empty (bounded per tick)."""
        t0 = time.perf_counter()
        total = CycleReport()
        try:
            for _ in range(max_batches):
                report = await self.worker.run_once()
                total.add(report)
                if report.claimed < self.worker.batch_size:
                    break
        except Exception as exc:
            log.exception("judge job failed")
            self._timed("judge", time.perf_counter() - t0, exc)
            return total
        self._timed("judge", time.perf_counter() - t0)
        return total

    def _job(self, name: str, what: str, run: Callable[[], T], fallback: T) -> T:
        """Run one scheduled job, timed; a failure is logged and counted in its stats, and gives `fallback`."""
        t0 = time.perf_counter()
        try:
            result = run()
        except _NotThisReplica:
            return fallback
        except Exception as exc:
            log.exception("%s failed", what)
            self._timed(name, time.perf_counter() - t0, exc)
            return fallback
        self._timed(name, time.perf_counter() - t0)
        return result

    def refresh_job(self) -> int:
        """Follow new verdicts into the windows and update the queue gauge."""
        return self._job("windows", "windows refresh", self._refresh, 0)

    def _refresh(self) -> int:
        added = self.windows.refresh()
        self.queue = queue_depth(self.engine)
        self.metrics.queue_depth.set(self.queue)
        if time.monotonic() - self._human_at >= self.human_kappa_every_s:
            self.metrics.human_kappa = human_kappas(self.engine, self.judges)
            self._human_at = time.monotonic()
        return added

    def trigger_job(self) -> list[int]:
        """Evaluate the trigger rules."""
        return self._job("triggers", "trigger evaluation", self.triggers.evaluate, [])

    def launcher_job(self) -> list[str]:
        """Watch retrain runs and start requested ones."""
        notes: list[str] = self._job("launcher", "launcher tick", self.supervisor.tick, [])
        for note in notes:
            log.info("%s", note)
        return notes

    def retention_job(self) -> Any:
        """Purge what the retention settings say is too old (one monitor replica at a time: lease "retention")."""
        report = self._job("retention", "retention purge", self._purge, None)
        if report is not None and (report.text_purged or report.exchanges_deleted
                                   or any(report.audit_deleted.values()) or report.partitions_dropped):
            log.info("retention: %d texts blanked, %d exchanges and %d verdicts deleted, audit %s, day partitions"
                     " dropped %s (%d labelled exchanges kept) (%.1f s)", report.text_purged,
                     report.exchanges_deleted, report.verdicts_deleted, report.audit_deleted,
                     report.partitions_dropped, report.labelled_moved, report.seconds)
        return report

    def _purge(self) -> Any:
        from careloop.core.retention import purge

        r = self.settings.retention
        if not acquire_lease(self.engine, "retention", self.holder, max(r.interval_s, 60.0)):
            raise _NotThisReplica
        return purge(self.engine, r)

    async def cycle(self) -> dict[str, Any]:
        """One full round: judge, refresh windows, evaluate triggers, tick the launcher."""
        report = await self.judge_job()
        added = await asyncio.to_thread(self.refresh_job)
        events = await asyncio.to_thread(self.trigger_job)
        notes = await asyncio.to_thread(self.launcher_job)
        return {"judged": report, "verdicts_added": added, "events": events, "launcher": notes}

    def healthy(self) -> tuple[bool, dict[str, Any]]:
        """Liveness and a summary for /healthz: the store answers and the windows are loaded."""
        db_ok = True
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception:
            db_ok = False
        body = {
            "status": "ok" if db_ok and self.started else "unavailable",
            "store": db_ok, "started": self.started, "holder": self.holder,
            "judges": list(self.judges), "reference": self.settings.monitor.reference_judge,
            "queue_depth": self.queue, "verdicts_followed": self.windows.ingested,
            "jobs": {k: {"runs": v.runs, "errors": v.errors, "last_s": round(v.last_s, 4),
                         "last_error": v.last_error} for k, v in self.stats.items()},
        }
        return db_ok and self.started, body

    async def aclose(self) -> None:
        """Close the judges and the store's pool."""
        await self.worker.aclose()
        self.engine.dispose()


def human_kappas(engine: Engine, judges: Iterable[str]) -> dict[str, float]:
    """Each judge's κ against the human labels, where people have labelled enough of its verdicts."""
    from careloop.monitor.review import human_kappa

    out = {}
    for judge in judges:
        value = human_kappa(engine, judge)
        if value is not None:
            out[judge] = value
    return out
