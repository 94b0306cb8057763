"""Starting retrain runs: one interface, two backends (local subprocess, Kubernetes Job), and the supervisor.

The supervisor owns the rules every start obeys, whoever asked (a trigger, or an operator through the
gateway's `POST /admin/retrain`, which inserts a `retrain_run` row with status 'requested'): at most one active
run (the store lease "retrain", so it holds across replicas), and a cooldown after each run. It also watches
active runs, renews the lease while they live, and marks runs whose process died as failed.
"""

from __future__ import annotations

import copy
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import httpx
import yaml
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from careloop.core.schema import RetrainRun, TriggerEvent, utcnow
from careloop.core.store import acquire_lease, lease_holder, release_lease, session_scope
from careloop.monitor.metrics import MonitorMetrics

log = logging.getLogger("careloop.monitor.launcher")

RETRAIN_LEASE = "retrain"
ACTIVE = ("pending", "running")
TERMINAL = ("succeeded", "failed", "aborted")


class LaunchError(RuntimeError):
    """A run could not be started (command missing, API server refused)."""


@dataclass(frozen=True)
class LaunchState:
    """Whether a started run's process/Job still runs, and how it ended."""

    alive: bool
    returncode: int | None = None
    detail: str = ""


class Launcher(Protocol):
    """Starts and watches a retrain process for a run id."""

    backend: str

    def start(self, run_id: int) -> str:
        """Start the run; returns a handle (pid, Job name) for poll/stop."""
        ...

    def poll(self, handle: str) -> LaunchState | None:
        """The run's state, or None when this launcher cannot know (a process another host started)."""
        ...

    def stop(self, handle: str) -> None:
        """Stop the run."""
        ...


def _fill(value: Any, run_id: int) -> Any:
    """Replace `{run_id}` in every string of a command or template."""
    if isinstance(value, str):
        return value.replace("{run_id}", str(run_id))
    if isinstance(value, list):
        return [_fill(v, run_id) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, run_id) for k, v in value.items()}
    return value


def default_retrain_command() -> list[str]:
    """`careloop retrain --run-id {run_id}` with this interpreter."""
    return [sys.executable, "-m", "careloop.cli", "retrain", "--run-id", "{run_id}"]


class LocalLauncher:
    """Runs the retrain command as a child process (its own session, output in runs_dir/run-N/)."""

    backend = "local"

    def __init__(self, command: list[str] | None = None, log_dir: Path | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.command = command or default_retrain_command()
        self.log_dir = log_dir
        self.env = env
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, run_id: int) -> str:
        """Spawn the command for `run_id`."""
        cmd = _fill(self.command, run_id)
        out: Any = subprocess.DEVNULL
        if self.log_dir is not None:
            path = self.log_dir / f"run-{run_id}"
            path.mkdir(parents=True, exist_ok=True)
            out = (path / "launcher.log").open("ab")
        try:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                    start_new_session=True)
        except OSError as exc:
            raise LaunchError(f"cannot start {cmd[0]!r}: {exc}") from exc
        finally:
            if out is not subprocess.DEVNULL:
                out.close()
        handle = str(proc.pid)
        self._procs[handle] = proc
        return handle

    def poll(self, handle: str) -> LaunchState | None:
        """State of a child this launcher started (None for a pid it does not own)."""
        proc = self._procs.get(handle)
        if proc is None:
            return None
        rc = proc.poll()
        if rc is None:
            return LaunchState(alive=True)
        self._procs.pop(handle, None)
        return LaunchState(alive=False, returncode=rc, detail=f"exit code {rc}")

    def stop(self, handle: str) -> None:
        """Terminate the child (SIGTERM, then SIGKILL)."""
        proc = self._procs.get(handle)
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


DEFAULT_JOB_TEMPLATE: dict[str, Any] = {
    "apiVersion": "batch/v1",
    "kind": "Job",
    "metadata": {"name": "careloop-retrain-{run_id}",
                 "labels": {"app.kubernetes.io/name": "careloop", "app.kubernetes.io/component": "retrain"}},
    "spec": {
        "backoffLimit": 0,
        "ttlSecondsAfterFinished": 86400,
        "template": {
            "metadata": {"labels": {"app.kubernetes.io/name": "careloop",
                                    "app.kubernetes.io/component": "retrain"}},
            "spec": {
                "restartPolicy": "Never",
                "containers": [{
                    "name": "retrain",
                    "image": "careloop:latest",
                    "args": ["retrain", "--run-id", "{run_id}"],
                    "envFrom": [{"secretRef": {"name": "careloop-env"}}],
                    "resources": {"limits": {"nvidia.com/gpu": 1}},
                }],
            },
        },
    },
}


class KubernetesLauncher:
    """Creates a batch/v1 Job per run from a template through the Kubernetes REST API."""

    backend = "kubernetes"

    def __init__(self, api_url: str, namespace: str, template: dict[str, Any] | None = None,
                 token: str | None = None, verify: str | bool = True, image: str | None = None,
                 timeout_s: float = 10.0) -> None:
        self.api_url = api_url.rstrip("/")
        self.namespace = namespace
        self.template = template or DEFAULT_JOB_TEMPLATE
        self.image = image
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.client = httpx.Client(base_url=self.api_url, headers=headers, verify=verify, timeout=timeout_s)

    @classmethod
    def from_settings(cls, settings: Any) -> KubernetesLauncher:
        """In-cluster defaults (service-account token and CA), overridable by settings."""
        m = settings.monitor
        template = None
        if m.kubernetes_job_template:
            template = load_job_template(Path(m.kubernetes_job_template))
        token = None
        token_path = Path(m.kubernetes_token_file)
        if token_path.is_file():
            token = token_path.read_text().strip()
        verify: str | bool = True
        if m.kubernetes_ca_file and Path(m.kubernetes_ca_file).is_file():
            verify = m.kubernetes_ca_file
        return cls(m.kubernetes_api_url or "https://kubernetes.default.svc", m.kubernetes_namespace,
                   template=template, token=token, verify=verify, image=m.kubernetes_image)

    def _jobs(self) -> str:
        return f"/apis/batch/v1/namespaces/{self.namespace}/jobs"

    def manifest(self, run_id: int) -> dict[str, Any]:
        """The Job for `run_id`: the template with {run_id} filled in and run labels added."""
        job = _fill(copy.deepcopy(self.template), run_id)
        if job.get("kind") != "Job":
            raise LaunchError(f"the retrain template must be a Job, got {job.get('kind')!r}")
        meta = job.setdefault("metadata", {})
        meta.setdefault("name", f"careloop-retrain-{run_id}")
        meta.setdefault("labels", {})["careloop.io/run-id"] = str(run_id)
        meta["namespace"] = self.namespace
        if self.image:
            for container in job["spec"]["template"]["spec"]["containers"]:
                container["image"] = self.image
        return job

    def start(self, run_id: int) -> str:
        """POST the Job; an existing Job of that name (a retry) is adopted."""
        job = self.manifest(run_id)
        name = str(job["metadata"]["name"])
        try:
            resp = self.client.post(self._jobs(), json=job)
        except httpx.HTTPError as exc:
            raise LaunchError(f"Kubernetes API unreachable: {exc}") from exc
        if resp.status_code == 409:
            return name
        if resp.status_code >= 300:
            raise LaunchError(f"creating Job {name}: HTTP {resp.status_code} {resp.text[:300]}")
        return name

    def poll(self, handle: str) -> LaunchState | None:
        """Read the Job's status: Complete → 0, Failed → 1, gone → 1; None when the API cannot be reached."""
        try:
            resp = self.client.get(f"{self._jobs()}/{handle}")
        except httpx.HTTPError as exc:
            log.warning("polling Job %s: %s", handle, exc)
            return None
        if resp.status_code == 404:
            return LaunchState(alive=False, returncode=1, detail="job not found")
        if resp.status_code >= 300:
            log.warning("polling Job %s: HTTP %d", handle, resp.status_code)
            return None
        status = resp.json().get("status") or {}
        for cond in status.get("conditions") or []:
            if cond.get("status") == "True" and cond.get("type") == "Complete":
                return LaunchState(alive=False, returncode=0, detail="job complete")
            if cond.get("status") == "True" and cond.get("type") == "Failed":
                return LaunchState(alive=False, returncode=1,
                                   detail=f"job failed: {cond.get('reason', '')} {cond.get('message', '')}".strip())
        if status.get("succeeded"):
            return LaunchState(alive=False, returncode=0, detail="job succeeded")
        return LaunchState(alive=True, detail=f"active={status.get('active', 0)}")

    def stop(self, handle: str) -> None:
        """Delete the Job and its pods."""
        try:
            self.client.delete(f"{self._jobs()}/{handle}", params={"propagationPolicy": "Background"})
        except httpx.HTTPError as exc:
            log.warning("deleting Job %s: %s", handle, exc)


def load_job_template(path: Path) -> dict[str, Any]:
    """Read a Job template (YAML); the first document that is a Job."""
    try:
        docs = list(yaml.safe_load_all(path.read_text()))
    except (OSError, yaml.YAMLError) as exc:
        raise LaunchError(f"cannot read Job template {path}: {exc}") from exc
    for doc in docs:
        if isinstance(doc, dict) and doc.get("kind") == "Job":
            return doc
    raise LaunchError(f"no Job in {path}")


def make_launcher(settings: Any) -> Launcher:
    """The backend the settings choose."""
    m = settings.monitor
    if m.retrain_backend == "kubernetes":
        return KubernetesLauncher.from_settings(settings)
    env = dict(os.environ)
    env.update({"CARELOOP_HOME": str(settings.home), "CARELOOP_DATABASE_URL": settings.database_url or "",
                "CARELOOP_UPSTREAM": settings.upstream})
    return LocalLauncher(command=m.retrain_command, log_dir=settings.runs_dir, env=env)


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
    def from_settings(cls, engine: Engine, settings: Any, holder: str, metrics: MonitorMetrics | None = None,
                      launcher: Launcher | None = None) -> RetrainSupervisor:
        """A supervisor configured by `settings.monitor`."""
        m = settings.monitor
        return cls(engine, launcher or make_launcher(settings), holder=holder, cooldown_s=m.cooldown_s,
                   lease_ttl_s=m.retrain_lease_ttl_s, stale_s=m.retrain_stale_s, metrics=metrics,
                   base_adapter=settings.base_model)

    # Rules.
    def active_runs(self) -> list[RetrainRun]:
        """Runs pending or running."""
        with Session(self.engine) as s:
            return list(s.exec(select(RetrainRun).where(RetrainRun.status.in_(ACTIVE))  # type: ignore[attr-defined]
                               .order_by(RetrainRun.id)).all())  # type: ignore[arg-type]

    def cooldown_until(self) -> datetime | None:
        """When the cooldown after the last finished run ends (None: no cooldown)."""
        with Session(self.engine) as s:
            last = s.exec(select(func.max(RetrainRun.finished_at)).where(
                RetrainRun.status.in_(TERMINAL), RetrainRun.started_at.is_not(None))).one()  # type: ignore[attr-defined,union-attr]
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
                run = RetrainRun(status="pending", trigger_event_id=trigger_event_id,
                                 backend=self.launcher.backend, base_adapter=base_adapter or self.base_adapter)
            else:
                run = s.get(RetrainRun, run.id)
                if run is None or run.status != "requested":
                    release_lease(self.engine, RETRAIN_LEASE, self.holder)
                    return None, "request no longer pending"
                run.status, run.backend = "pending", self.launcher.backend
                if trigger_event_id is not None:
                    run.trigger_event_id = trigger_event_id
            s.add(run)
            s.flush()
            run_id = int(run.id)  # type: ignore[arg-type]
        try:
            handle = self.launcher.start(run_id)
        except Exception as exc:
            self._finish(run_id, "failed", error=f"launch failed: {exc}")
            release_lease(self.engine, RETRAIN_LEASE, self.holder)
            return None, f"launch failed: {exc}"
        now = utcnow()
        with session_scope(self.engine) as s:
            row = s.get(RetrainRun, run_id)
            assert row is not None
            if row.status == "pending":  # the run itself may already have moved on
                row.status = "running"
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

    def _finish(self, run_id: int, status: str, error: str | None = None) -> RetrainRun | None:
        with session_scope(self.engine) as s:
            row = s.get(RetrainRun, run_id)
            if row is None:
                return None
            if row.status not in TERMINAL:
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
            if row is not None and row.status in TERMINAL:
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
                    self._finish(run.id, "failed", error=f"no heartbeat for {self.stale_s:.0f} s")
                    release_lease(self.engine, RETRAIN_LEASE, self.holder)
                    notes.append(f"run {run.id} failed: stale")
                continue
            if state.alive:
                acquire_lease(self.engine, RETRAIN_LEASE, self.holder, self.lease_ttl_s)
                continue
            status = "succeeded" if state.returncode == 0 else "failed"
            row = self._finish(run.id, status, error=None if status == "succeeded" else state.detail)
            release_lease(self.engine, RETRAIN_LEASE, self.holder)
            notes.append(f"run {run.id} {row.status if row else status} ({state.detail})")
        notes.extend(self._start_requested())
        still_active = self.active_runs()
        if not still_active and lease_holder(self.engine, RETRAIN_LEASE) == self.holder:
            release_lease(self.engine, RETRAIN_LEASE, self.holder)  # nothing runs: never keep the lease
        if self.metrics is not None:
            self.metrics.retrain_in_progress.set(1 if still_active else 0)
        return notes

    def _start_requested(self) -> list[str]:
        notes: list[str] = []
        with Session(self.engine) as s:
            requested = list(s.exec(select(RetrainRun).where(RetrainRun.status == "requested")
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
