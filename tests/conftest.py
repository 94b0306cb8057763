"""Shared fixtures: settings in a temp home, the real CPU vLLM server, a real PostgreSQL database."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from careloop.core.settings import Settings

MODEL_CACHE = Path(os.environ.get("CARELOOP_TEST_MODEL_DIR",
                                  Path("~/.cache/careloop-test/models/SmolLM2-135M-Instruct").expanduser()))
PG_ADMIN_URL = os.environ.get("CARELOOP_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")

# Two xdist workers share the machine's cores: each gets half, for its vLLM servers (vLLM's own binding would put
# every server on core 0) and for torch in its process and the trainings it starts (oversubscribed OpenMP
# threads spin against each other: a training beside the other worker's took 4x as long with two threads).
WORKER = os.environ.get("PYTEST_XDIST_WORKER")
CORES_PER_WORKER = max(1, (os.cpu_count() or 2) // 2) if WORKER else 0  # 0: all (no xdist)
if WORKER:
    first = int(WORKER.removeprefix("gw")) % 2 * CORES_PER_WORKER
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"{first}-{first + CORES_PER_WORKER - 1}")
    os.environ.setdefault("OMP_NUM_THREADS", str(CORES_PER_WORKER))


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings with a fresh data dir and SQLite store in a temp folder."""
    s = Settings(home=tmp_path / "home", database_url=f"sqlite:///{tmp_path / 'home' / 'careloop.db'}")
    # A triggered retrain in a test runs a no-op unless the test asks for the real one (never a stray training).
    s.monitor.retrain_command = [sys.executable, "-c", "pass", "{run_id}"]
    s.ensure_dirs()
    return s


@pytest.fixture(scope="session")
def embedded_model_dir() -> Path:
    """The converted SmolLM2-135M-Instruct, prepared once per machine."""
    from careloop.modelprep import prepare_model

    return prepare_model(MODEL_CACHE)


@pytest.fixture(scope="session")
def vllm_url(embedded_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a real CPU vLLM server with the embedded model (one per test session).

    `CARELOOP_TEST_UPSTREAM` points the tests at a server that is already running instead.
    """
    existing = os.environ.get("CARELOOP_TEST_UPSTREAM")
    if existing:
        yield existing.rstrip("/")
        return

    home = tmp_path_factory.mktemp("vllm-home")
    with serve_vllm(Settings(home=home, vllm_port=free_port()), embedded_model_dir) as url:
        yield url


@dataclass
class Replica:
    """One real CPU vLLM server process with the embedded model (as `careloop up` starts it) and its URL."""

    settings: Settings
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Where it listens."""
        return f"http://127.0.0.1:{self.settings.vllm_port}"

    def start(self) -> None:
        """Start the server process (in its own process group)."""
        from careloop.stack import vllm_command, vllm_env

        env = vllm_env(self.settings)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(vllm_command(self.settings), stdout=log, stderr=subprocess.STDOUT,
                                         env=env, start_new_session=True)

    def wait(self, timeout_s: float = 600) -> None:
        """Block until it answers /health (fails with its log's tail if it exits first)."""
        from careloop.stack import wait_http

        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM exited: {self.log_path.read_text(errors='replace')[-3000:]}")
            try:
                wait_http(f"{self.url}/health", None, 2)
                return
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise

    def running(self) -> Replica:
        """This replica, started (again) if it is not running."""
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        self.wait()
        return self

    def stop(self) -> None:
        """Terminate it (kill after 30 s)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        with suppress(subprocess.TimeoutExpired):
            proc.wait(30)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def new_replica(settings: Settings, embedded_model_dir: Path) -> Replica:
    """A replica (not started) serving the embedded model from `settings.home`."""
    settings.models_dir.mkdir(parents=True, exist_ok=True)
    settings.base_model_dir.symlink_to(embedded_model_dir, target_is_directory=True)
    return Replica(settings, settings.home / "vllm.log")


@contextmanager
def serve_vllm(settings: Settings, embedded_model_dir: Path) -> Iterator[str]:
    """A real CPU vLLM server with the embedded model for the block's duration."""
    replica = new_replica(settings, embedded_model_dir)
    try:
        yield replica.running().url
    finally:
        replica.stop()


@pytest.fixture(scope="session")
def second_vllm(embedded_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replica]:
    """A second CPU vLLM beside the session's, in the dtype `auto` does not pick here (bf16 runs, slowly,
    without native BF16), started on first use (`.running()`): the other dtype path of the served-numerics
    check, and the second replica of the cluster tests, which restart it and, last of the session, kill it."""
    from careloop.core.hardware import native_bf16

    settings = Settings(home=tmp_path_factory.mktemp("vllm-second"), vllm_port=free_port(), vllm_kv_cache_gb=1,
                        vllm_dtype="float32" if native_bf16() else "bfloat16")
    replica = new_replica(settings, embedded_model_dir)  # a 1 GiB KV cache: two servers on a small machine
    try:
        yield replica
    finally:
        replica.stop()


# The suite runs on two pytest-xdist workers (pyproject's addopts), each with a vLLM server of its own. Every
# test file that needs vLLM is in one of two groups, and a group runs on one worker (the scheduler below), so no
# third server boots; the heaviest end-to-end tests are split between the groups and the rest of the suite
# fills in around them.
VLLM_GROUPS = {
    **dict.fromkeys(("test_demo_e2e.py", "test_monitor_e2e.py", "test_run_e2e.py", "test_judges_vllm.py",
                     "test_gateway_vllm.py", "test_replicas_postgres.py"), "vllm-a"),
    **dict.fromkeys(("test_rollback_e2e.py", "test_train.py", "test_served_numerics.py",
                     "test_vllm_replicas.py"), "vllm-b"),
}


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """xdist's scheduling by module, with each vLLM group as one unit of work (on one worker)."""
    from xdist.scheduler import LoadScopeScheduling

    class VllmGroups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]  # a module's tests stay together (its fixtures, its order)
            return VLLM_GROUPS.get(path.rsplit("/", 1)[-1], path)

        def _assign_work_unit(self, node: Any) -> None:
            for group in sorted(set(VLLM_GROUPS.values())):  # the longest units start first
                if group in self.workqueue:
                    self.workqueue.move_to_end(group, last=False)
            super()._assign_work_unit(node)

    return VllmGroups(config, log)


def pytest_itemcollected(item: pytest.Item) -> None:
    """A test that needs vLLM must be in a group: otherwise its worker would boot one more server."""
    if {"vllm_url", "second_vllm"} & set(getattr(item, "fixturenames", ())) and item.path.name not in VLLM_GROUPS:
        raise pytest.UsageError(f"{item.nodeid} needs vLLM: add {item.path.name} to VLLM_GROUPS (tests/conftest.py)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked `kills_second_vllm` run last, so the second vLLM need not boot again after them."""
    items.sort(key=lambda item: item.get_closest_marker("kills_second_vllm") is not None)


@contextmanager
def scratch_pg(prefix: str) -> Iterator[str]:
    """A new, empty database on the real PostgreSQL server, dropped when the block ends."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A database of the session's own on the real PostgreSQL server."""
    with scratch_pg("careloop_test") as url:
        yield url


@pytest.fixture
def fresh_pg() -> Iterator[str]:
    """A new, empty PostgreSQL database for one test."""
    with scratch_pg("careloop_mig") as url:
        yield url


@pytest.fixture(scope="session")
def distilled_judges_dir() -> Path:
    """A trained distilled judge, trained once per machine (minutes on 2 cores) and cached."""
    from careloop.monitor.judges.distilled_train import ensure_distilled

    cache = Settings(home=Path(os.environ.get("CARELOOP_TEST_JUDGE_HOME",
                                              Path("~/.cache/careloop-test/home").expanduser())))
    ensure_distilled(cache, show_progress=False)
    return cache.judges_dir
