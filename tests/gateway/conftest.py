"""Fixtures of the gateway's tests: the local fake vLLM upstream."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.gateway.fake_upstream import FakeUpstream


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    """A fake OpenAI-compatible upstream on loopback, started and stopped around a test."""
    upstream = FakeUpstream()
    await upstream.start()
    yield upstream
    await upstream.stop()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client session for talking to the gateway under test."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session
