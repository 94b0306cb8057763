"""Sticky canary routing and sampling rates."""

from __future__ import annotations

import random

from careloop.gateway.routing import Routes, choose, user_key
from careloop.gateway.sampling import Sampler


def test_no_canary_everything_goes_stable() -> None:
    routes = Routes(stable="base", known=True)
    assert {choose(routes, f"u{i}").target for i in range(200)} == {"base"}


def test_canary_share_is_sticky_and_grows_without_moving_users() -> None:
    users = [f"user-{i}" for i in range(4000)]
    small = Routes(stable="v1", stable_adapter="v1", canary="v2", canary_fraction=0.1, known=True)
    large = Routes(stable="v1", stable_adapter="v1", canary="v2", canary_fraction=0.5, known=True)
    on_small = {u for u in users if choose(small, u).target == "v2"}
    on_large = {u for u in users if choose(large, u).target == "v2"}
    assert 0.08 < len(on_small) / len(users) < 0.12
    assert 0.46 < len(on_large) / len(users) < 0.54
    assert on_small <= on_large  # a user on the canary stays there as its share grows
    assert all(choose(small, u).target == ("v2" if u in on_small else "v1") for u in users[:500])
    assert choose(small, "user-1").user_key == user_key("user-1") != "user-1"


def test_requests_without_a_user_are_split_per_request() -> None:
    routes = Routes(stable="v1", canary="v2", canary_fraction=0.3, known=True)
    rand = random.Random(7)
    picks = [choose(routes, None, rand) for _ in range(5000)]
    share = sum(p.role == "canary" for p in picks) / len(picks)
    assert 0.27 < share < 0.33 and all(p.user_key is None for p in picks)


def test_sampler_rates_by_role() -> None:
    sampler = Sampler(rate=0.1, canary_rate=1.0)
    assert sampler.decide("canary", rand=0.99)
    assert not sampler.decide("stable", rand=0.5)
    assert sampler.decide("stable", rand=0.05)
    assert not Sampler(0.0, 0.0).decide("stable", rand=0.0)
