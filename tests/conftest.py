"""Shared fixtures: settings in a temp home, the real CPU vLLM server, a real PostgreSQL database."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from careloop.core.settings import Settings

MODEL_CACHE = Path(os.environ.get("CARELOOP_TEST_MODEL_DIR",
                                  Path("~/.cache/careloop-test/models/SmolLM2-135M-Instruct").expanduser()))
PG_ADMIN_URL = os.environ.get("CARELOOP_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


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


@contextmanager
def serve_vllm(settings: Settings, embedded_model_dir: Path) -> Iterator[str]:
    """A real CPU vLLM server with the embedded model, as `careloop up` starts it, for the block's duration."""
    from careloop.stack import vllm_command, vllm_env, wait_http

    settings.models_dir.mkdir(parents=True, exist_ok=True)
    settings.base_model_dir.symlink_to(embedded_model_dir, target_is_directory=True)
    log_path = settings.home / "vllm.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(vllm_command(settings), stdout=log, stderr=subprocess.STDOUT,
                                env=vllm_env(settings), start_new_session=True)
    url = f"http://127.0.0.1:{settings.vllm_port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"vLLM exited: {log_path.read_text(errors='replace')[-3000:]}")
            try:
                wait_http(f"{url}/health", None, 2)
                break
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


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
