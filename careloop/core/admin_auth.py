"""The admin bearer token check, one for every admin surface: the gateway, the monitor and the console."""

from __future__ import annotations

import hmac


def bearer_ok(header_value: str, admin_token: str | None) -> bool:
    """Whether an Authorization header carries the admin bearer token (constant-time compare)."""
    if not admin_token:
        return False
    scheme, _, value = header_value.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), admin_token.encode())


def admin_refusal(header_value: str | None, admin_token: str | None) -> tuple[int, str, str, str] | None:
    """Why an admin API request is refused, as (status, message, error type, code); None when it may pass.

    No token configured: 404, the admin API is off. A missing or wrong token: 401.
    """
    if not admin_token:
        return (404, "the admin API is disabled: set CARELOOP_ADMIN_TOKEN to enable it", "invalid_request_error",
                "admin_disabled")
    if not bearer_ok(header_value or "", admin_token):
        return 401, "missing or wrong admin bearer token", "authentication_error", "unauthorized"
    return None
