"""An LLM judge over any OpenAI-compatible chat endpoint (`self` through vLLM, `external` anywhere else)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import httpx
from prometheus_client import Counter

from careloop.monitor.judges.base import JudgeError, JudgeInput, JudgeResult
from careloop.monitor.judges.rubric import VERDICT_SCHEMA, ParseError, judge_messages, parse_verdict

log = logging.getLogger(__name__)

JUDGE_ERRORS = Counter("careloop_judge_errors_total", "Judge replies that could not be used, by kind",
                       ["judge", "kind"])


def chat_url(base: str) -> str:
    """The chat-completions URL of an endpoint given as `http://host:port` or `…/v1`."""
    base = base.rstrip("/")
    if base.endswith("/chat/completions"):
        return base
    if not base.endswith("/v1"):
        base += "/v1"
    return base + "/chat/completions"


class LLMJudge:
    """Grades with a rubric prompt; JSON-schema structured output where the endpoint takes it.

    Replies that do not parse are counted (`careloop_judge_errors_total{kind="malformed"}`) and retried up to
    `max_retries` times, then skipped (None). Transport errors on every item raise JudgeError so the worker
    backs off; on some items they yield None for those items.
    """

    def __init__(self, name: str, url: str, model: str, api_key: str | None = None, concurrency: int = 8,
                 timeout_s: float = 60.0, structured: bool = True, max_retries: int = 2,
                 max_tokens: int = 160, version: str | None = None,
                 client: httpx.AsyncClient | None = None) -> None:
        self.name = name
        self.model = model
        self.version = version or model
        self.url = chat_url(url)
        self.structured = structured
        self.max_retries = max(0, max_retries)
        self.max_tokens = max_tokens
        self._sem = asyncio.Semaphore(max(1, concurrency))
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = client or httpx.AsyncClient(
            headers=headers, timeout=httpx.Timeout(timeout_s, connect=5.0),
            limits=httpx.Limits(max_connections=max(1, concurrency), max_keepalive_connections=max(1, concurrency)))

    def _body(self, item: JudgeInput, attempt: int) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model, "messages": judge_messages(item.messages, item.response),
            "max_tokens": self.max_tokens, "temperature": 0.0 if attempt == 0 else 0.7,
        }
        if self.structured:
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "verdict", "schema": VERDICT_SCHEMA, "strict": True}}
        return body

    async def _post(self, body: dict[str, Any]) -> str:
        resp = await self._client.post(self.url, json=body)
        if resp.status_code == 400 and "response_format" in body:
            # The endpoint does not take structured output: fall back to parsing for good.
            log.warning("judge %s: endpoint refused structured output (%s); parsing free text",
                        self.name, resp.text[:200])
            JUDGE_ERRORS.labels(self.name, "structured_unsupported").inc()
            self.structured = False
            body = {k: v for k, v in body.items() if k != "response_format"}
            resp = await self._client.post(self.url, json=body)
        if resp.status_code >= 400:
            raise httpx.HTTPStatusError(f"{resp.status_code}: {resp.text[:200]}", request=resp.request,
                                        response=resp)
        data = resp.json()
        try:
            content = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise ParseError(f"no choices in reply: {str(data)[:120]}") from None
        return content or ""

    async def _grade_one(self, item: JudgeInput) -> JudgeResult | BaseException | None:
        async with self._sem:
            t0 = time.perf_counter()
            for attempt in range(self.max_retries + 1):
                try:
                    text = await self._post(self._body(item, attempt))
                    level, cls, rationale = parse_verdict(text)
                    return JudgeResult(harm_level=level, response_class=cls, rationale=rationale,
                                       latency_ms=(time.perf_counter() - t0) * 1000)
                except ParseError as exc:
                    JUDGE_ERRORS.labels(self.name, "malformed").inc()
                    log.debug("judge %s: malformed reply for %s: %s", self.name, item.exchange_id, exc)
                except (httpx.HTTPError, ValueError) as exc:
                    kind = "http" if isinstance(exc, httpx.HTTPStatusError) else "transport"
                    JUDGE_ERRORS.labels(self.name, kind).inc()
                    return exc
            return None

    async def grade(self, items: Sequence[JudgeInput]) -> list[JudgeResult | None]:
        """Grade a batch concurrently (bounded by the semaphore)."""
        if not items:
            return []
        outcomes = await asyncio.gather(*(self._grade_one(i) for i in items))
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        if failures and len(failures) == len(outcomes):
            raise JudgeError(f"judge {self.name} unavailable at {self.url}: {failures[0]}")
        return [None if isinstance(o, BaseException) else o for o in outcomes]

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self._client.aclose()
