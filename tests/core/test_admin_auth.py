"""The one admin bearer-token check and the one last-user-message reader."""

from __future__ import annotations

from typing import Any

from careloop.core.admin_auth import admin_refusal, bearer_ok
from careloop.core.messages import last_user_message

TOKEN = "a-long-enough-admin-token"


def test_the_admin_api_is_off_without_a_token() -> None:
    refusal = admin_refusal(f"Bearer {TOKEN}", None)
    assert refusal is not None and refusal[0] == 404 and refusal[3] == "admin_disabled"


def test_only_the_exact_bearer_token_passes() -> None:
    assert admin_refusal(f"Bearer {TOKEN}", TOKEN) is None
    assert admin_refusal(f"bearer  {TOKEN} ", TOKEN) is None  # scheme case and spaces do not matter
    for given in (None, "", TOKEN, f"Basic {TOKEN}", f"Bearer {TOKEN}x"):
        refusal = admin_refusal(given, TOKEN)
        assert refusal is not None and refusal[:1] == (401,) and refusal[3] == "unauthorized"
    assert not bearer_ok(f"Bearer {TOKEN}", "")


def test_last_user_message() -> None:
    messages: list[dict[str, Any]] = [{"role": "user", "content": "first"}, {"role": "assistant", "content": "a"},
                {"role": "user", "content": [{"type": "text", "text": "parts"}]}, {"role": "assistant"}]
    assert last_user_message(messages) == str([{"type": "text", "text": "parts"}])
    assert last_user_message(messages[:2]) == "first"
    assert last_user_message([{"role": "system", "content": "s"}]) == ""
