"""Replay real prompts through the gateway as live traffic, counting every request that fails."""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp


@dataclass(frozen=True)
class TrafficItem:
    """One prompt to send, with where it came from."""

    prompt: str
    kind: str  # benign | harmful | probe


@dataclass
class ReplayStats:
    """What a replay sent and got back."""

    sent: int = 0
    ok: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    by_model: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def _jsonl(path: Path) -> list[dict]:
    with path.open() as fh:
        return [json.loads(line) for line in fh if line.strip()]


def traffic_mix(data_dir: Path, n: int, seed: int = 0, exclude: Iterable[str] = (),
                weights: tuple[float, float, float] = (0.4, 0.4, 0.2)) -> list[TrafficItem]:
    """A shuffled mix of MedQuAD questions, MedSafetyBench requests and XSTest safe probes (n items)."""
    skip = {p.strip().lower() for p in exclude}
    rng = random.Random(seed)
    pools = {
        "benign": [r["prompt"] for r in _jsonl(data_dir / "medquad" / "questions.jsonl")],
        "harmful": [r["prompt"] for r in _jsonl(data_dir / "medsafetybench" / "train.jsonl")],
        "probe": [r["prompt"] for r in _jsonl(data_dir / "xstest" / "prompts.jsonl") if r["label"] == "safe"],
    }
    items: list[TrafficItem] = []
    for (kind, pool), weight in zip(pools.items(), weights, strict=True):
        pool = [p for p in pool if p.strip().lower() not in skip]
        rng.shuffle(pool)
        take = round(n * weight)
        items.extend(TrafficItem(p, kind) for p in (pool * (take // max(1, len(pool)) + 1))[:take])
    rng.shuffle(items)
    return items[:n]


async def replay(gateway_url: str, items: Sequence[TrafficItem], model: str, concurrency: int = 8,
                 max_tokens: int = 96, users: int = 200, on_done: Callable[[ReplayStats], None] | None = None,
                 stop: Callable[[], bool] | None = None, seed: int = 0) -> ReplayStats:
    """Send every item as a chat completion (sticky user ids so canary splits apply); count failures."""
    stats = ReplayStats()
    rng = random.Random(seed)
    user_ids = [f"user-{uuid.UUID(int=rng.getrandbits(128)).hex[:12]}" for _ in range(max(1, users))]
    queue: asyncio.Queue[TrafficItem] = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)
    start = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=600)

    async def worker(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            if stop is not None and stop():
                return
            item = queue.get_nowait()
            body = {"model": model, "messages": [{"role": "user", "content": item.prompt}],
                    "max_tokens": max_tokens, "temperature": 0, "user": rng.choice(user_ids)}
            stats.sent += 1
            try:
                async with session.post(f"{gateway_url}/v1/chat/completions", json=body) as resp:
                    payload = await resp.read()
                    if resp.status == 200:
                        stats.ok += 1
                        served = resp.headers.get("x-careloop-target", "")
                        stats.by_model[served] = stats.by_model.get(served, 0) + 1
                    else:
                        stats.failed += 1
                        stats.failures.append(f"{resp.status}: {payload[:200]!r}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                stats.failed += 1
                stats.failures.append(f"{type(exc).__name__}: {exc}")
            if on_done is not None:
                on_done(stats)

    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    stats.seconds = time.monotonic() - start
    return stats
