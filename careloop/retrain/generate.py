"""Greedy generation through vLLM (base model or a runtime-loaded LoRA adapter) with the OpenAI client.

Adapters are loaded and unloaded through the one vLLM adapter client, `careloop.gateway.vllm_admin`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx

from careloop.gateway import vllm_admin


class GenerationError(RuntimeError):
    """vLLM refused or failed a request that generation cannot do without."""


@dataclass(frozen=True)
class Generated:
    """One completion: its text and why it stopped."""

    text: str
    finish_reason: str | None


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


async def _adapter_call(call: Callable[..., Awaitable[None]], upstream: str, *args: str, api_key: str | None,
                        timeout_s: float) -> None:
    """One call of the gateway's vLLM adapter client, in a session of its own, within `timeout_s`."""
    async with aiohttp.ClientSession() as session:
        await asyncio.wait_for(call(session, upstream, *args, api_key=api_key), timeout_s)


def load_adapter(upstream: str, name: str, path: str, api_key: str | None = None,
                 timeout_s: float = 120.0) -> None:
    """Load a LoRA adapter into vLLM under `name` (a name already loaded is left as is); for sync callers."""
    asyncio.run(_adapter_call(vllm_admin.load_adapter, upstream, name, path, api_key=api_key, timeout_s=timeout_s))


def unload_adapter(upstream: str, name: str, api_key: str | None = None, timeout_s: float = 60.0) -> bool:
    """Unload an adapter from vLLM; False when that failed (or vLLM is unreachable); for sync callers."""
    try:
        asyncio.run(_adapter_call(vllm_admin.unload_adapter, upstream, name, api_key=api_key, timeout_s=timeout_s))
    except (aiohttp.ClientError, TimeoutError, vllm_admin.AdapterLoadError):
        return False
    return True


def chat(prompt: str, system: str | None = None) -> list[dict[str, str]]:
    """The chat messages for one user prompt."""
    messages = [{"role": "system", "content": system}] if system else []
    return [*messages, {"role": "user", "content": prompt}]


async def generate_many(upstream: str, model: str, conversations: Sequence[list[dict[str, Any]]], *,
                        max_tokens: int = 128, temperature: float = 0.0, concurrency: int = 16,
                        api_key: str | None = None, timeout_s: float = 600.0,
                        progress: Callable[[int], None] | None = None) -> list[Generated]:
    """Greedy (by default) chat completions for many conversations, in order, `concurrency` at a time."""
    from openai import AsyncOpenAI, OpenAIError

    client = AsyncOpenAI(base_url=f"{upstream.rstrip('/')}/v1", api_key=api_key or "none", timeout=timeout_s,
                         max_retries=2)
    sem = asyncio.Semaphore(max(1, concurrency))
    results: list[Generated | None] = [None] * len(conversations)

    async def one(i: int, messages: list[dict[str, Any]]) -> None:
        async with sem:
            try:
                resp = await client.chat.completions.create(
                    model=model, messages=messages,  # type: ignore[arg-type]
                    max_tokens=max_tokens, temperature=temperature, seed=0)
            except OpenAIError as exc:
                raise GenerationError(f"generation through {model!r} failed: {exc}") from exc
            choice = resp.choices[0]
            results[i] = Generated(text=choice.message.content or "", finish_reason=choice.finish_reason)
            if progress is not None:
                progress(1)

    try:
        await asyncio.gather(*(one(i, m) for i, m in enumerate(conversations)))
    finally:
        await client.close()
    return [r if r is not None else Generated("", None) for r in results]


def served_logprobs(upstream: str, model: str, prompt_ids: Sequence[int], continuation_ids: Sequence[int],
                    api_key: str | None = None, timeout_s: float = 120.0) -> list[float]:
    """The served model's log-probabilities of `continuation_ids` after `prompt_ids` (teacher forcing)."""
    ids = [*prompt_ids, *continuation_ids]
    resp = httpx.post(f"{upstream.rstrip('/')}/v1/completions", headers=_headers(api_key), timeout=timeout_s,
                      json={"model": model, "prompt": ids, "max_tokens": 1, "temperature": 0.0,
                            "prompt_logprobs": 0})
    if resp.status_code >= 400:
        raise GenerationError(f"prompt logprobs through {model!r} failed: {resp.status_code} {resp.text[:300]}")
    rows = resp.json()["choices"][0]["prompt_logprobs"]
    out = []
    for pos in range(len(prompt_ids), len(ids)):
        entry = rows[pos] or {}
        out.append(float(entry[str(ids[pos])]["logprob"]))
    return out


def generate_sync(upstream: str, model: str, conversations: Sequence[list[dict[str, Any]]],
                  **kwargs: Any) -> list[Generated]:
    """`generate_many` for synchronous callers."""
    return asyncio.run(generate_many(upstream, model, conversations, **kwargs))
