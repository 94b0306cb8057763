"""`careloop console`, `careloop users add|list|disable|enable|reset-password` and `careloop audit log`."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from careloop.core.settings import Settings

console = Console(stderr=True)
users_app = typer.Typer(help="People who may sign in to the console, and their roles.", no_args_is_help=True)
audit_app = typer.Typer(help="The audit trail: who did what, when and why.", no_args_is_help=True)


def _store() -> tuple[Settings, Engine]:
    from careloop.core.migrations import upgrade
    from careloop.core.settings import load_settings
    from careloop.core.store import make_engine

    settings = load_settings()
    upgrade(settings.database_url or "")
    return settings, make_engine(settings.database_url or "")


def _password(stdin: bool) -> str:
    if stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return str(typer.prompt("password", hide_input=True, confirmation_prompt=True))


def _fail(message: str) -> typer.Exit:
    console.print(f"[red]error:[/] {message}")
    return typer.Exit(2)


@users_app.command("add")
def users_add(
    name: Annotated[str, typer.Argument(help="The sign-in name.")],
    role: Annotated[str, typer.Option(help="reviewer (labels), approver (+ approve, promote, roll back) or admin.")],
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="Read the password from stdin.")] = False,
) -> None:
    """Create a console user (the password is asked twice, or read from stdin)."""
    from careloop.console.users import UserError, add_user
    from careloop.core.audit_trail import cli_actor, record

    settings, engine = _store()
    try:
        user = add_user(engine, name, role, _password(password_stdin), settings.console.password_min_length)
    except UserError as exc:
        raise _fail(str(exc)) from exc
    record(engine, cli_actor(), "user_add", user.name, details={"role": user.role})
    console.print(f"[green]added[/] {user.name} ({user.role})")


@users_app.command("list")
def users_list() -> None:
    """Every console user with role and state."""
    from careloop.console.users import list_users

    _, engine = _store()
    table = Table("name", "role", "state")
    for u in list_users(engine):
        table.add_row(u.name, u.role, "disabled" if u.disabled else "active")
    Console().print(table)


def _set_disabled(name: str, disabled: bool) -> None:
    from careloop.console.users import UserError, set_disabled
    from careloop.core.audit_trail import cli_actor, record

    _, engine = _store()
    try:
        set_disabled(engine, name, disabled)
    except UserError as exc:
        raise _fail(str(exc)) from exc
    record(engine, cli_actor(), "user_disable" if disabled else "user_enable", name)
    console.print(f"{name} {'disabled (signed out everywhere)' if disabled else 'enabled'}")


@users_app.command("disable")
def users_disable(name: Annotated[str, typer.Argument(help="The user.")]) -> None:
    """Disable a user and end their sessions at once."""
    _set_disabled(name, True)


@users_app.command("enable")
def users_enable(name: Annotated[str, typer.Argument(help="The user.")]) -> None:
    """Let a disabled user sign in again."""
    _set_disabled(name, False)


@users_app.command("reset-password")
def users_reset_password(
    name: Annotated[str, typer.Argument(help="The user.")],
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="Read the password from stdin.")] = False,
) -> None:
    """Set a new password (the user is signed out everywhere)."""
    from careloop.console.users import UserError, reset_password
    from careloop.core.audit_trail import cli_actor, record

    settings, engine = _store()
    try:
        reset_password(engine, name, _password(password_stdin), settings.console.password_min_length)
    except UserError as exc:
        raise _fail(str(exc)) from exc
    record(engine, cli_actor(), "user_reset_password", name)
    console.print(f"new password set for {name}")


@audit_app.command("log")
def audit_log(
    limit: Annotated[int, typer.Option(help="Entries to show, newest first.")] = 50,
    actor: Annotated[str | None, typer.Option(help="Only this person.")] = None,
    action: Annotated[str | None, typer.Option(help="Only this action (label, approve, rollback, …).")] = None,
    target: Annotated[str | None, typer.Option(help="Only this target (an adapter, an exchange).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object a line.")] = False,
) -> None:
    """Show the audit trail: who did what, to what, when and why."""
    from careloop.core.audit_trail import entries

    _, engine = _store()
    rows = entries(engine, limit=limit, actor=actor, action=action, target=target)
    if as_json:
        for r in rows:
            typer.echo(json.dumps({"id": r.id, "created_at": r.created_at.isoformat(), "actor": r.actor,
                                   "role": r.role, "action": r.action, "target": r.target, "reason": r.reason,
                                   "details": r.details}))
        return
    table = Table("when (UTC)", "who", "action", "target", "why")
    for r in rows:
        table.add_row(r.created_at.strftime("%Y-%m-%d %H:%M:%S"), f"{r.actor} ({r.role})" if r.role else r.actor,
                      r.action, r.target, r.reason)
    Console(width=200).print(table)


def console_cmd(
    host: Annotated[str | None, typer.Option(help="Bind address (CARELOOP_CONSOLE__HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (CARELOOP_CONSOLE__PORT).")] = None,
) -> None:
    """Serve the oversight console: review queue, adapters and approvals, judges, timeline, audit log."""
    from careloop.console.server import run_console
    from careloop.core.settings import load_settings

    settings = load_settings()
    if host:
        settings.console.host = host
    if port:
        settings.console.port = port
    run_console(settings)


def register(app: typer.Typer) -> None:
    """Attach `console`, `users` and `audit` to the main app."""
    app.add_typer(users_app, name="users")
    app.add_typer(audit_app, name="audit")
    app.command("console")(console_cmd)
