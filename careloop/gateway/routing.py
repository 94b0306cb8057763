"""Which vLLM model a request goes to: the stable target, or the canary for a sticky share of users."""

from __future__ import annotations

import hashlib
import hmac
import random
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Routes:
    """The routing table the gateway serves from; replaced whole by each reconcile (never mutated)."""

    stable: str  # vLLM model name of the stable target: an adapter name or the base model
    stable_adapter: str | None = None  # the stable adapter's name, None when the base model serves
    canary: str | None = None  # the canary adapter's name while one is live and loaded everywhere
    canary_fraction: float = 0.0
    known: bool = False  # False until the registry and upstream have been read once
    loaded: dict[str, list[str]] = field(default_factory=dict)  # replica → adapters loaded there
    replicas: tuple[str, ...] = ()  # the replicas requests may go to (reached, holding the stable target)

    def targets(self) -> list[tuple[str, str]]:
        """(model name, role) of every live target."""
        out = [(self.stable, "stable")]
        if self.canary:
            out.append((self.canary, "canary"))
        return out


@dataclass(frozen=True, slots=True)
class Choice:
    """Where one request goes."""

    target: str
    role: str  # stable | canary
    user_key: str | None  # 32-hex keyed hash of the user/session id; None when the request named none


def user_key(user_id: str, secret: bytes = b"") -> str:
    """A stable key for a user/session id (what the traffic log stores): HMAC-SHA256 under the gateway's
    secret, so nobody without the secret can test guesses of ids against it."""
    return hmac.new(secret, user_id.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()[:32]


def canary_bucket(canary: str, user_id: str) -> float:
    """A user's place in [0, 1) for this canary: a user stays on the canary as its share grows."""
    data = f"{canary}\x00{user_id}".encode("utf-8", "surrogatepass")
    digest = hashlib.blake2b(data, digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def choose(routes: Routes, user_id: str | None, rand: random.Random | None = None, secret: bytes = b"") -> Choice:
    """Pick the target: the canary for users whose bucket falls under the canary share, else the stable one.

    Requests that name no user or session are split per request.
    """
    key = user_key(user_id, secret) if user_id else None
    if routes.canary and routes.canary_fraction > 0.0:
        point = canary_bucket(routes.canary, user_id) if user_id else (rand or random).random()
        if point < routes.canary_fraction:
            return Choice(routes.canary, "canary", key)
    return Choice(routes.stable, "stable", key)
