"""`careloop keys create|list|revoke`: client API keys, straight in the store (the admin API does the same)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import orjson
import typer

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

keys_app = typer.Typer(help="Client API keys for /v1/* (stored hashed; a key is shown once, at creation).",
                       no_args_is_help=True)


def _engine(database_url: str | None) -> Engine:
    """The store, migrated to head (keys live in tables added by a migration)."""
    from careloop.core.migrations import upgrade
    from careloop.core.settings import load_settings
    from careloop.core.store import make_engine

    url = load_settings(database_url=database_url).database_url or ""
    upgrade(url)
    return make_engine(url)


DbOption = Annotated[str | None, typer.Option("--database-url", help="Store URL (CARELOOP_DATABASE_URL).")]


@keys_app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="The key's name: what the store and metrics record.")],
    rpm: Annotated[int | None, typer.Option("--rpm", min=1, help="Requests per minute (default: unlimited).")] = None,
    tpm: Annotated[int | None, typer.Option("--tpm", min=1, help="Tokens per minute (default: unlimited).")] = None,
    expires: Annotated[str | None, typer.Option("--expires", help="Duration (90d, 12h) or ISO date.")] = None,
    database_url: DbOption = None,
) -> None:
    """Create a key and print it (the only time it is shown: only its hash is stored)."""
    from careloop.gateway.keys import KeyAdminError, create_key, parse_expiry

    engine = _engine(database_url)
    try:
        key, row = create_key(engine, name, rpm, tpm, parse_expiry(expires) if expires else None)
    except KeyAdminError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    finally:
        engine.dispose()
    typer.echo(key)
    typer.echo(f"key '{row.name}' created (rpm {row.rpm or 'unlimited'}, tpm {row.tpm or 'unlimited'}, "
               f"expires {row.expires_at.isoformat() if row.expires_at else 'never'}); store it now, it is not "
               "shown again", err=True)


@keys_app.command("list")
def list_(
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    database_url: DbOption = None,
) -> None:
    """List keys: name, prefix, limits, dates (never the key)."""
    from careloop.gateway.keys import key_dict, list_keys

    engine = _engine(database_url)
    try:
        rows = [key_dict(r) for r in list_keys(engine)]
    finally:
        engine.dispose()
    if json_out:
        typer.echo(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return
    for r in rows:
        state = "active" if r["active"] else ("revoked" if r["revoked_at"] else "expired")
        typer.echo(f"{r['name']:<24} {r['prefix']}…  rpm {r['rpm'] or '-':<8} tpm {r['tpm'] or '-':<10} "
                   f"{state:<8} expires {r['expires_at'] or 'never'}")


@keys_app.command("revoke")
def revoke(
    name: Annotated[str, typer.Argument(help="The key's name.")],
    database_url: DbOption = None,
) -> None:
    """Revoke a key (every gateway stops accepting it within keys.refresh_s)."""
    from careloop.gateway.keys import KeyAdminError, revoke_key

    engine = _engine(database_url)
    try:
        revoke_key(engine, name)
    except KeyAdminError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    finally:
        engine.dispose()
    typer.echo(f"key '{name}' revoked")


def register(app: typer.Typer) -> None:
    """Attach `careloop keys`."""
    app.add_typer(keys_app, name="keys")
