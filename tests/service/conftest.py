"""Fixtures of the gateway's tests: the local fake vLLM upstream."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.service.fake_upstream import FakeUpstream


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    """A fake OpenAI-compatible upstream on loopback, started and stopped around a test."""
    upstream = FakeUpstream()
    await upstream.start()
    yield upstream
    await upstream.stop()
