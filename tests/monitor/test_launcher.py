"""Retrain launching: local subprocess and Kubernetes Job backends, the lease, cooldown, requested runs."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from careloop.core.schema import RETRAIN_LEASE, RetrainRun, RunStatus, TriggerEvent, utcnow
from careloop.core.settings import Settings
from careloop.core.store import acquire_lease, lease_holder, release_lease, session_scope
from careloop.monitor.launcher import KubernetesLauncher, LocalLauncher, make_launcher
from careloop.monitor.metrics import MonitorMetrics
from careloop.monitor.supervisor import RetrainSupervisor
from tests.conftest import free_port
from tests.monitor._monitor_fixtures import ServerThread, store


def _cmd(code: str) -> list[str]:
    return [sys.executable, "-c", code, "{run_id}"]


def _wait(sup: RetrainSupervisor, run_id: int, timeout: float = 20.0) -> RetrainRun:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sup.tick()
        with Session(sup.engine) as s:
            row = s.get(RetrainRun, run_id)
            assert row is not None
            if row.status not in ("pending", "running"):
                return row
        time.sleep(0.05)
    raise AssertionError("run did not finish")


@pytest.fixture
def engine(tmp_path: Path):  # type: ignore[no-untyped-def]
    e = store(f"sqlite:///{tmp_path / 'store.db'}")
    yield e
    e.dispose()


def test_local_run_starts_under_the_lease_and_ends_succeeded(engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    marker = tmp_path / "ran"
    launcher = LocalLauncher(_cmd(f"import sys; open({str(marker)!r}, 'w').write(sys.argv[1])"),
                             log_dir=tmp_path / "runs")
    metrics = MonitorMetrics()
    sup = RetrainSupervisor(engine, launcher, holder="monitor-1", cooldown_s=3600, metrics=metrics)
    run, why = sup.start(trigger_event_id=None, base_adapter="stable-a")
    assert why is None and run is not None and run.status == "running" and run.handle
    assert lease_holder(engine, RETRAIN_LEASE) == "monitor-1"
    assert metrics.retrain_in_progress._value.get() == 1
    # never two at once
    again, why = sup.start()
    assert again is None and why is not None and why.startswith("in_progress")
    done = _wait(sup, int(run.id))  # type: ignore[arg-type]
    assert done.status == "succeeded" and done.finished_at is not None
    assert marker.read_text() == str(run.id)  # {run_id} was filled in
    assert lease_holder(engine, RETRAIN_LEASE) is None
    assert metrics.retrain_runs.labels(outcome="succeeded")._value.get() == 1
    assert metrics.retrain_in_progress._value.get() == 0
    # cooldown after the run
    blocked, why = sup.start()
    assert blocked is None and why is not None and why.startswith("cooldown")


def test_a_run_whose_process_dies_is_failed_and_the_lease_released(engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    metrics = MonitorMetrics()
    sup = RetrainSupervisor(engine, LocalLauncher(_cmd("raise SystemExit(3)")), holder="m", cooldown_s=0,
                            metrics=metrics)
    run, _ = sup.start()
    assert run is not None
    row = _wait(sup, int(run.id))  # type: ignore[arg-type]
    assert row.status == "failed" and "exit code 3" in (row.error or "")
    assert lease_holder(engine, RETRAIN_LEASE) is None
    assert metrics.retrain_runs.labels(outcome="failed")._value.get() == 1


def test_a_missing_command_fails_the_run_cleanly(engine) -> None:  # type: ignore[no-untyped-def]
    sup = RetrainSupervisor(engine, LocalLauncher(["/nonexistent/careloop-retrain"]), holder="m", cooldown_s=0)
    run, why = sup.start()
    assert run is None and why is not None and "launch failed" in why
    with Session(engine) as s:
        rows = s.exec(select(RetrainRun)).all()
    assert [r.status for r in rows] == ["failed"]
    assert lease_holder(engine, RETRAIN_LEASE) is None


def test_the_lease_holds_across_replicas(engine) -> None:  # type: ignore[no-untyped-def]
    assert acquire_lease(engine, RETRAIN_LEASE, "other-replica", 600)
    sup = RetrainSupervisor(engine, LocalLauncher(_cmd("pass")), holder="me", cooldown_s=0)
    run, why = sup.start()
    assert run is None and why == "lease: held by other-replica"


def test_requested_runs_start_under_the_same_rules(engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with session_scope(engine) as s:
        s.add(RetrainRun(status="requested", base_adapter="stable-a"))
        s.add(RetrainRun(status="requested", base_adapter="stable-a"))
    sup = RetrainSupervisor(engine, LocalLauncher(_cmd("import time; time.sleep(0.3)")), holder="m",
                            cooldown_s=3600)
    sup.tick()
    with Session(engine) as s:
        statuses = [r.status for r in s.exec(select(RetrainRun).order_by(RetrainRun.id)).all()]  # type: ignore[arg-type]
    assert statuses == ["running", "requested"]
    _wait(sup, 1)
    for _ in range(3):
        sup.tick()
    with Session(engine) as s:
        second = s.get(RetrainRun, 2)
        events = s.exec(select(TriggerEvent).order_by(TriggerEvent.id)).all()  # type: ignore[arg-type]
    assert second is not None and second.status == "requested"  # cooldown: it waits
    kinds = [(e.rule, e.kind) for e in events]
    assert kinds.count(("operator", "retrain_started")) == 1
    waits = [e for e in events if e.kind == "suppressed"]
    assert [w.decision.split(": ")[1] for w in waits] == ["in_progress", "cooldown"]  # once per reason


def test_a_run_nobody_watches_is_failed_after_its_heartbeat_goes_stale(engine) -> None:  # type: ignore[no-untyped-def]
    from datetime import timedelta

    with session_scope(engine) as s:
        s.add(RetrainRun(status="running", backend="local", handle="999999",
                         heartbeat_at=utcnow() - timedelta(hours=2)))
    sup = RetrainSupervisor(engine, LocalLauncher(_cmd("pass")), holder="m", cooldown_s=0, stale_s=600)
    sup.tick()
    with Session(engine) as s:
        row = s.get(RetrainRun, 1)
    assert row is not None and row.status == "failed" and "heartbeat" in (row.error or "")


class FakeKubernetes:
    """The slice of the Kubernetes API a Job launcher uses, at the HTTP level."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str, str | None]] = []
        self.deny = False

    def app(self) -> Starlette:
        async def jobs(request: Request) -> JSONResponse:
            ns = request.path_params["ns"]
            self.requests.append((request.method, request.url.path, request.headers.get("authorization")))
            if self.deny:
                return JSONResponse({"kind": "Status", "reason": "Forbidden"}, status_code=403)
            body = await request.json()
            name = body["metadata"]["name"]
            if name in self.jobs:
                return JSONResponse({"kind": "Status", "reason": "AlreadyExists"}, status_code=409)
            body["metadata"]["namespace"] = ns
            body["status"] = {"active": 1}
            self.jobs[name] = body
            return JSONResponse(body, status_code=201)

        async def job(request: Request) -> JSONResponse:
            name = request.path_params["name"]
            self.requests.append((request.method, request.url.path, request.headers.get("authorization")))
            if name not in self.jobs:
                return JSONResponse({"kind": "Status", "reason": "NotFound"}, status_code=404)
            if request.method == "DELETE":
                self.jobs.pop(name)
                return JSONResponse({"kind": "Status", "status": "Success"})
            return JSONResponse(self.jobs[name])

        return Starlette(routes=[
            Route("/apis/batch/v1/namespaces/{ns}/jobs", jobs, methods=["POST"]),
            Route("/apis/batch/v1/namespaces/{ns}/jobs/{name}", job, methods=["GET", "DELETE"]),
        ])


def test_kubernetes_backend_creates_a_job_from_the_template_and_follows_it(engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    fake = FakeKubernetes()
    template = tmp_path / "job.yaml"
    template.write_text("""
apiVersion: batch/v1
kind: Job
metadata:
  name: retrain-{run_id}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: retrain
          image: careloop:old
          args: ["retrain", "--run-id", "{run_id}"]
""")
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    with ServerThread(fake.app(), free_port()) as srv:
        settings = Settings(home=tmp_path / "home")
        settings.monitor.retrain_backend = "kubernetes"
        settings.monitor.kubernetes_api_url = srv.url
        settings.monitor.kubernetes_job_template = str(template)
        settings.monitor.kubernetes_token_file = str(token)
        settings.monitor.kubernetes_namespace = "careloop-prod"
        settings.monitor.kubernetes_image = "careloop:1.2.3"
        launcher = make_launcher(settings)
        assert isinstance(launcher, KubernetesLauncher)
        sup = RetrainSupervisor(engine, launcher, holder="m", cooldown_s=0)
        run, why = sup.start()
        assert why is None and run is not None and run.handle == f"retrain-{run.id}"
        job = fake.jobs[f"retrain-{run.id}"]
        container = job["spec"]["template"]["spec"]["containers"][0]
        assert container["args"] == ["retrain", "--run-id", str(run.id)]
        assert container["image"] == "careloop:1.2.3"
        assert job["metadata"]["labels"]["careloop.io/run-id"] == str(run.id)
        assert fake.requests[0] == ("POST", "/apis/batch/v1/namespaces/careloop-prod/jobs", "Bearer s3cret")
        sup.tick()
        with Session(engine) as s:
            assert s.get(RetrainRun, run.id).status == "running"  # type: ignore[union-attr]
        job["status"] = {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
        sup.tick()
        with Session(engine) as s:
            assert s.get(RetrainRun, run.id).status == "succeeded"  # type: ignore[union-attr]
        assert lease_holder(engine, RETRAIN_LEASE) is None
        # a second start of the same run id adopts the existing Job (409) instead of failing
        assert launcher.start(int(run.id)) == f"retrain-{run.id}"  # type: ignore[arg-type]
        # a failed Job fails the run
        sup.cooldown_s = 0
        run2, _ = sup.start()
        assert run2 is not None
        fake.jobs[str(run2.handle)]["status"] = {"failed": 1, "conditions": [
            {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}
        sup.tick()
        with Session(engine) as s:
            row = s.get(RetrainRun, run2.id)
        assert row is not None and row.status == "failed" and "BackoffLimitExceeded" in (row.error or "")
        # the API refusing the Job fails the launch, not the monitor
        fake.deny = True
        run3, why = sup.start()
        assert run3 is None and why is not None and "HTTP 403" in why
        assert lease_holder(engine, RETRAIN_LEASE) is None


def test_a_run_that_writes_its_own_outcome_is_counted_and_frees_the_lease(engine) -> None:  # type: ignore[no-untyped-def]
    metrics = MonitorMetrics()
    sup = RetrainSupervisor(engine, LocalLauncher(_cmd("import time; time.sleep(0.5)")), holder="m",
                            cooldown_s=0, metrics=metrics)
    run, _ = sup.start()
    assert run is not None
    with session_scope(engine) as s:  # what `careloop retrain --run-id N` does when its canary is rolled back
        row = s.get(RetrainRun, run.id)
        assert row is not None
        row.status, row.outcome, row.finished_at = "succeeded", "rolled_back", utcnow()
        s.add(row)
    sup.tick()
    sup.tick()
    assert metrics.retrain_runs.labels(outcome="rolled_back")._value.get() == 1
    assert metrics.retrain_in_progress._value.get() == 0
    assert lease_holder(engine, RETRAIN_LEASE) is None


def test_the_lease_covers_the_training_and_a_rollout_still_blocks_new_runs(engine) -> None:  # type: ignore[no-untyped-def]
    metrics = MonitorMetrics()
    sup = RetrainSupervisor(engine, LocalLauncher(_cmd("import time; time.sleep(60)")), holder="m", cooldown_s=0,
                            metrics=metrics)
    run, _ = sup.start()
    assert run is not None and lease_holder(engine, RETRAIN_LEASE) == "m"
    with session_scope(engine) as s:  # what `careloop retrain` does once its candidate is registered
        row = s.get(RetrainRun, run.id)
        assert row is not None
        row.status, row.outcome = RunStatus.ROLLING_OUT, "registered"
        s.add(row)
    release_lease(engine, RETRAIN_LEASE, "m")
    try:
        sup.tick()
        assert lease_holder(engine, RETRAIN_LEASE) is None  # not renewed through the canary
        assert metrics.retrain_in_progress._value.get() == 1
        again, why = sup.start()
        assert again is None and why == f"in_progress: retrain run {run.id} is rolling_out"
        assert lease_holder(engine, RETRAIN_LEASE) is None
    finally:
        sup.launcher.stop(str(run.handle))
    row = _wait(sup, int(run.id))  # type: ignore[arg-type]
    assert row.status == RunStatus.FAILED  # the process died during its canary
