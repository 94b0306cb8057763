"""Real processes for the fault-injection tests: the stub upstream and the gateway, on loopback ports."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
GATEWAY_CODE = ("from careloop.core.settings import Settings; from careloop.gateway.server import run_gateway; "
                "run_gateway(Settings(), 'info')")


def wait_http(url: str, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Block until `url` answers (any status), or raise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return
        except Exception:
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not come up")


class Stub:
    """bench/stub_upstream.py in its own process."""

    def __init__(self, chunks: int = 4, chunk_delay: float = 0.0) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "stub_upstream.py"), "--port",
                                      str(self.port), "--chunks", str(chunks), "--chunk-delay", str(chunk_delay)],
                                     cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        wait_http(f"{self.url}/health", proc=self.proc)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class GatewayProc:
    """The gateway (`run_gateway`) in its own process, with its home, store and upstream."""

    def __init__(self, home: Path, upstream: str, database_url: str | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.home = home
        self.upstream = upstream
        self.database_url = database_url or f"sqlite:///{home / 'careloop.db'}"
        self.extra = env or {}
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = home / "gateway.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait_ready: bool = True) -> GatewayProc:
        """Start it (a fresh process on the same home and port) and wait until it serves."""
        self.home.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "CARELOOP_HOME": str(self.home), "CARELOOP_UPSTREAM": self.upstream,
               "CARELOOP_DATABASE_URL": self.database_url, "CARELOOP_GATEWAY__PORT": str(self.port),
               "CARELOOP_SAMPLE_RATE": "0.1", **self.extra}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-c", GATEWAY_CODE], cwd=ROOT, env=env, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        if wait_ready:
            wait_http(f"{self.url}/healthz", 60, self.proc)
        return self

    def kill(self) -> None:
        """SIGKILL: no drain, no shutdown hook."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait (graceful: the log drains); returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


class Forwarder:
    """A TCP port in front of PostgreSQL: `close()` drops every connection through it and refuses new ones (the
    store is down), `open()` brings it back on the same port."""

    def __init__(self, target_port: int = 5432) -> None:
        self.port = free_port()
        self.target_port = target_port
        self.server: asyncio.AbstractServer | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def open(self) -> None:
        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                writer.close()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            self.writers.update((writer, up_writer))
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

        self.server = await asyncio.start_server(handle, "127.0.0.1", self.port)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        for writer in list(self.writers):
            writer.close()
        self.writers.clear()
