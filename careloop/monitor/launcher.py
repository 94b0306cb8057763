"""Starting retrain processes: one interface, two backends (local subprocess, Kubernetes Job).

`careloop.monitor.supervisor` decides when a run starts and watches it; a backend only starts, polls and stops
the process of `careloop retrain --run-id N`.
"""

from __future__ import annotations

import copy
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
import yaml

from careloop.core.settings import Settings

log = logging.getLogger("careloop.monitor.launcher")


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
    def from_settings(cls, settings: Settings) -> KubernetesLauncher:
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


def make_launcher(settings: Settings) -> Launcher:
    """The backend the settings choose."""
    m = settings.monitor
    if m.retrain_backend == "kubernetes":
        return KubernetesLauncher.from_settings(settings)
    env = dict(os.environ)
    env.update({"CARELOOP_HOME": str(settings.home), "CARELOOP_DATABASE_URL": settings.database_url or "",
                "CARELOOP_UPSTREAM": settings.upstream})
    return LocalLauncher(command=m.retrain_command, log_dir=settings.runs_dir, env=env)
