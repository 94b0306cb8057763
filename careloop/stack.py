"""Run the whole loop on one machine: vLLM (CPU) + gateway + monitor + console as child processes, stopped together."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from careloop.core.hardware import native_bf16
from careloop.core.settings import Settings
from careloop.core.sigterm import exit_on_sigterm


@dataclass
class Child:
    """One process of the stack and where its log goes."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path


@dataclass
class Stack:
    """The running processes of `careloop up`, in start order."""

    settings: Settings
    children: list[Child] = field(default_factory=list)

    @property
    def gateway_url(self) -> str:
        """The gateway's base URL."""
        return f"http://{self.settings.gateway.host}:{self.settings.gateway.port}"

    def stop(self, timeout_s: float = 20.0) -> None:
        """Stop every child, newest first: SIGINT, then SIGTERM, then SIGKILL; and this home's local retrain runs."""
        stop_local_runs(self.settings)
        for child in reversed(self.children):
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + timeout_s
        for child in reversed(self.children):
            remaining = max(0.1, deadline - time.monotonic())
            try:
                child.proc.wait(remaining)
            except subprocess.TimeoutExpired:
                child.proc.terminate()
                try:
                    child.proc.wait(5)
                except subprocess.TimeoutExpired:
                    child.proc.kill()
                    child.proc.wait()
        self.children.clear()

    def failed(self) -> Child | None:
        """The first child that has exited, if any."""
        return next((c for c in self.children if c.proc.poll() is not None), None)


def stop_local_runs(settings: Settings) -> list[int]:
    """SIGTERM the local retrain processes this home's monitor started (they mark themselves failed on exit)."""
    from sqlmodel import Session, select

    from careloop.core.schema import STARTED_RUN_STATES, RetrainRun
    from careloop.core.store import make_engine

    stopped: list[int] = []
    try:
        engine = make_engine(settings.database_url or "")
        with Session(engine) as session:
            runs = session.exec(select(RetrainRun).where(RetrainRun.backend == "local",
                                                         RetrainRun.status.in_(STARTED_RUN_STATES))).all()  # type: ignore[attr-defined]
        engine.dispose()
    except Exception:  # no store yet, or it is gone: nothing of ours runs
        return stopped
    for run in runs:
        if run.handle and run.handle.isdigit() and _is_retrain_process(int(run.handle)):
            try:
                os.kill(int(run.handle), signal.SIGTERM)
                stopped.append(int(run.handle))
            except ProcessLookupError:
                pass
    return stopped


def _is_retrain_process(pid: int) -> bool:
    """Whether pid is still a retrain process (not another process that reused a dead run's pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"retrain" in cmdline


def console_url(settings: Settings) -> str:
    """The oversight console's base URL."""
    return f"http://{settings.console.host}:{settings.console.port}"


def vllm_command(settings: Settings, host: str = "127.0.0.1") -> list[str]:
    """The command line that serves the base model on CPU with runtime LoRA loading."""
    return [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(settings.base_model_dir),
        "--served-model-name", settings.base_model,
        "--host", host, "--port", str(settings.vllm_port),
        "--enable-lora", "--max-lora-rank", str(max(16, settings.retrain.lora_r)), "--max-loras", "4",
        "--max-model-len", "2048", "--dtype", vllm_dtype(settings),
        *settings.vllm_extra_args,
    ]


def vllm_dtype(settings: Settings) -> str:
    """The dtype vLLM serves in: the setting, or for `auto` whichever this CPU computes faster."""
    if settings.vllm_dtype != "auto":
        return settings.vllm_dtype
    return "bfloat16" if native_bf16() else "float32"


def vllm_cpu_bind(setting: str, cores: set[int] | None = None) -> str:
    """vLLM's VLLM_CPU_OMP_THREADS_BIND for the `vllm_cpu_bind` setting on this process's cores."""
    if cores is None:
        cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    if setting == "all" or (setting == "auto" and len(cores) <= 4):
        return ",".join(str(c) for c in sorted(cores))
    return "auto" if setting in ("auto", "vllm") else setting


def vllm_env(settings: Settings) -> dict[str, str]:
    """The environment vLLM's CPU build needs."""
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings.vllm_kv_cache_gb))
    env.setdefault("VLLM_CPU_OMP_THREADS_BIND", vllm_cpu_bind(settings.vllm_cpu_bind))
    env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("VLLM_DO_NOT_TRACK", "1")
    return env


def careloop_env(settings: Settings) -> dict[str, str]:
    """The environment the gateway and monitor children get: exactly this process's settings, as a YAML file."""
    import yaml

    path = settings.home / "effective-settings.yaml"
    data = settings.model_dump(mode="json", exclude={"config_file"})
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARELOOP_")}
    env["CARELOOP_CONFIG_FILE"] = str(path)
    env["CARELOOP_HOME"] = str(settings.home)
    return env


def port_in_use(host: str, port: int) -> bool:
    """Whether something already listens on host:port."""
    import socket

    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def check_ports(settings: Settings, with_monitor: bool) -> None:
    """Fail before starting anything if a port the stack needs is taken (another `careloop up`?)."""
    wanted = [("gateway", settings.gateway.host, settings.gateway.port, "CARELOOP_GATEWAY__PORT")]
    if settings.vllm_managed:
        wanted.insert(0, ("vLLM", "127.0.0.1", settings.vllm_port, "CARELOOP_VLLM_PORT"))
    if with_monitor:
        wanted.append(("monitor", settings.monitor.host, settings.monitor.port, "CARELOOP_MONITOR__PORT"))
    if settings.console.enabled:
        wanted.append(("console", settings.console.host, settings.console.port, "CARELOOP_CONSOLE__PORT"))
    taken = [f"{name} port {port} ({env})" for name, host, port, env in wanted if port_in_use(host, port)]
    if taken:
        raise RuntimeError(f"already in use: {', '.join(taken)}; stop the other process or choose other ports")


def spawn(stack: Stack, name: str, cmd: Sequence[str], env: dict[str, str]) -> Child:
    """Start a child process with its output in the data dir's logs."""
    log_dir = stack.settings.home / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    log = log_path.open("ab")
    proc = subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    child = Child(name, proc, log_path)
    stack.children.append(child)
    return child


def wait_http(url: str, child: Child | None, timeout_s: float, tick: Callable[[float], None] | None = None) -> None:
    """Wait until `url` answers 200; fail early if the child dies."""
    start = time.monotonic()
    while True:
        if child is not None and child.proc.poll() is not None:
            tail = child.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{child.name} exited with {child.proc.returncode}; log tail:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        elapsed = time.monotonic() - start
        if tick:
            tick(elapsed)
        if elapsed > timeout_s:
            raise TimeoutError(f"{url} not ready after {timeout_s:.0f} s")
        time.sleep(0.5)


RUNNING_VLLM_WAIT_S = 60.0  # how long `up` waits for a vLLM it did not start (it may be starting too)


def start_vllm(stack: Stack, console: Console) -> None:
    """Start vLLM as a child of the stack, or (vllm_managed false) wait for the one at `upstream`."""
    settings = stack.settings
    if not settings.vllm_managed:
        with console.status(f"waiting for the vLLM at {settings.upstream}…"):
            wait_http(f"{settings.upstream}/health", None, RUNNING_VLLM_WAIT_S)
        console.print(f"[green]using the running vLLM[/] at {settings.upstream} (vllm_managed is false)")
        return
    with console.status("starting vLLM (CPU) with the embedded model…") as status:
        child = spawn(stack, "vllm", vllm_command(settings), vllm_env(settings))
        wait_http(f"{settings.upstream}/health", child, 600,
                  tick=lambda s: status.update(f"starting vLLM (CPU) with the embedded model… {s:.0f} s"))
    console.print(f"[green]vLLM ready[/] at {settings.upstream} (log: {child.log_path})")


def start_stack(settings: Settings, console: Console, with_monitor: bool = True) -> Stack:
    """Prepare the model and store, then start vLLM, the gateway, (optionally) the monitor, and the console."""
    from careloop.core.migrations import upgrade
    from careloop.modelprep import prepare_model

    settings.ensure_dirs()
    prepare_model(settings.base_model_dir, console=console)
    upgrade(settings.database_url or "")
    if with_monitor and "distilled" in {settings.monitor.reference_judge, *settings.monitor.judges}:
        from careloop.monitor.judges.distilled_train import ensure_distilled

        ensure_distilled(settings)  # trains the judge once on a fresh home (minutes), before the monitor waits
    if settings.vllm_managed:
        settings.upstream = f"http://127.0.0.1:{settings.vllm_port}"
    check_ports(settings, with_monitor)
    stack = Stack(settings)
    try:
        start_vllm(stack, console)
        env = careloop_env(settings)
        with console.status("starting the gateway…"):
            child = spawn(stack, "gateway", [sys.executable, "-m", "careloop.cli", "serve"], env)
            wait_http(f"{stack.gateway_url}/readyz", child, 120)
        console.print(f"[green]gateway ready[/] at {stack.gateway_url} (model name: {settings.public_model})")
        if with_monitor:
            child = spawn(stack, "monitor", [sys.executable, "-m", "careloop.cli", "monitor"], env)
            wait_http(f"http://{settings.monitor.host}:{settings.monitor.port}/healthz", child, 180)
            console.print(f"[green]monitor ready[/] at http://{settings.monitor.host}:{settings.monitor.port}/metrics")
        if settings.console.enabled:
            child = spawn(stack, "console", [sys.executable, "-m", "careloop.cli", "console"], env)
            wait_http(f"{console_url(settings)}/healthz", child, 60)
            console.print(f"[green]console ready[/] at {console_url(settings)} "
                          "(accounts: careloop users add NAME --role reviewer|approver|admin)")
    except BaseException:
        stack.stop()
        raise
    return stack


def run_stack(settings: Settings, console: Console, with_monitor: bool = True) -> int:
    """Start the stack and keep it up until Ctrl-C or a child dies; return an exit code."""
    exit_on_sigterm()
    try:
        stack = start_stack(settings, console, with_monitor)
    except (RuntimeError, TimeoutError) as exc:
        console.print(f"[red]error:[/] {exc}")
        return 1
    console.print("[bold]careloop is up.[/] Ctrl-C stops everything.")
    try:
        while True:
            dead = stack.failed()
            if dead is not None:
                console.print(f"[red]{dead.name} exited ({dead.proc.returncode}); stopping.[/] log: {dead.log_path}")
                return 1
            time.sleep(1)
    except KeyboardInterrupt:
        console.print("stopping…")
        return 0
    finally:
        stack.stop()
