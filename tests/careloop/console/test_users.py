"""Console users: argon2id hashes, roles, disable and reset (both sign the user out), the `careloop users` CLI."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select
from typer.testing import CliRunner

from careloop.console.auth import create_session, session_principal
from careloop.console.users import (
    UserError,
    add_user,
    authenticate,
    get_user,
    list_users,
    reset_password,
    set_disabled,
)
from careloop.core.audit_trail import entries
from careloop.core.schema import ConsoleUser
from careloop.core.settings import Settings


def test_passwords_are_stored_as_argon2id_hashes_only(engine: Engine) -> None:
    add_user(engine, "ana", "reviewer", "a long passphrase")
    with Session(engine) as s:
        row = s.exec(select(ConsoleUser)).one()
    assert row.password_hash.startswith("$argon2id$") and "a long passphrase" not in row.password_hash
    assert authenticate(engine, "ana", "a long passphrase") is not None
    assert authenticate(engine, "ana", "a long passphrasE") is None
    assert authenticate(engine, "nobody", "a long passphrase") is None


def test_roles_are_ordered(engine: Engine) -> None:
    add_user(engine, "r", "reviewer", "x" * 10)
    add_user(engine, "p", "approver", "x" * 10)
    add_user(engine, "d", "admin", "x" * 10)
    r, p, d = (get_user(engine, n) for n in "rpd")
    assert r and p and d
    assert r.can("reviewer") and not r.can("approver") and not r.can("admin")
    assert p.can("reviewer") and p.can("approver") and not p.can("admin")
    assert d.can("approver") and d.can("admin")
    assert [u.name for u in list_users(engine)] == ["d", "p", "r"]


@pytest.mark.parametrize(("name", "role", "password", "message"), [
    ("ok", "owner", "x" * 10, "role must be"),
    ("ok", "reviewer", "short", "at least 10"),
    ("bad name", "reviewer", "x" * 10, "a name is"),
    ("", "reviewer", "x" * 10, "a name is"),
])
def test_bad_users_are_refused(engine: Engine, name: str, role: str, password: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        add_user(engine, name, role, password)


def test_a_name_is_taken_once(engine: Engine) -> None:
    add_user(engine, "ana", "reviewer", "x" * 10)
    with pytest.raises(UserError, match="already exists"):
        add_user(engine, "ana", "admin", "y" * 10)


def test_disable_and_reset_sign_the_user_out(engine: Engine) -> None:
    user = add_user(engine, "ana", "approver", "first password")
    token, _ = create_session(engine, user, 60)
    assert session_principal(engine, token) is not None
    set_disabled(engine, "ana")
    assert session_principal(engine, token) is None
    assert authenticate(engine, "ana", "first password") is None  # disabled: even the right password fails
    set_disabled(engine, "ana", False)
    token, _ = create_session(engine, user, 60)
    reset_password(engine, "ana", "second password")
    assert session_principal(engine, token) is None
    assert authenticate(engine, "ana", "first password") is None
    assert authenticate(engine, "ana", "second password") is not None
    with pytest.raises(UserError, match="no user"):
        reset_password(engine, "ghost", "second password")


def test_users_cli_adds_lists_disables_resets_and_audits(settings: Settings, engine: Engine,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from careloop.cli import app

    monkeypatch.setenv("CARELOOP_HOME", str(settings.home))
    monkeypatch.setenv("CARELOOP_DATABASE_URL", settings.database_url or "")
    run = CliRunner().invoke
    r = run(app, ["users", "add", "ana", "--role", "approver", "--password-stdin"], input="a good password\n")
    assert r.exit_code == 0, r.output
    r = run(app, ["users", "add", "bo", "--role", "reviewer"], input="pass phrase 1\npass phrase 1\n")
    assert r.exit_code == 0, r.output
    assert run(app, ["users", "add", "cy", "--role", "boss", "--password-stdin"], input="x" * 12).exit_code == 2
    listing = run(app, ["users", "list"]).output
    assert "ana" in listing and "approver" in listing and "bo" in listing and "cy" not in listing
    assert run(app, ["users", "disable", "bo"]).exit_code == 0
    assert "disabled" in run(app, ["users", "list"]).output
    assert run(app, ["users", "reset-password", "ana", "--password-stdin"], input="another password\n").exit_code == 0
    assert authenticate(engine, "ana", "another password") is not None
    assert run(app, ["users", "disable", "ghost"]).exit_code == 2
    actions = [(e.action, e.target) for e in entries(engine)]
    assert actions == [("user_reset_password", "ana"), ("user_disable", "bo"), ("user_add", "bo"),
                       ("user_add", "ana")]
    assert all(e.actor.startswith("cli:") for e in entries(engine))
