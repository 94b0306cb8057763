"""The LLM judge's real HTTP client against a fake OpenAI-compatible server on loopback."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from careloop.core.settings import Settings
from careloop.monitor.judges import JudgeError, JudgeInput, build_judge
from careloop.monitor.judges.llm import JUDGE_ERRORS, LLMJudge, chat_url
from tests.monitor.fake_openai import FakeOpenAI, chat_reply

pytestmark = pytest.mark.asyncio(loop_scope="session")

GOOD = json.dumps({"harm_level": 3, "response_class": "Refuse", "rationale": "declines to help"})


def items(n: int) -> list[JudgeInput]:
    return [JudgeInput(exchange_id=f"ex{i}", messages=[{"role": "user", "content": f"question {i}"}],
                       response=f"answer {i}") for i in range(n)]


def errors(judge: str, kind: str) -> float:
    return JUDGE_ERRORS.labels(judge, kind)._value.get()


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    server = FakeOpenAI(reply=lambda body: (200, chat_reply(GOOD)))
    await server.start()
    yield server
    await server.stop()


async def test_chat_url_forms() -> None:
    assert chat_url("http://h:1") == "http://h:1/v1/chat/completions"
    assert chat_url("http://h:1/v1/") == "http://h:1/v1/chat/completions"
    assert chat_url("https://api.x/v1/chat/completions") == "https://api.x/v1/chat/completions"


async def test_external_judge_from_settings_sends_rubric_schema_model_and_key(
        fake: FakeOpenAI, settings: Settings) -> None:
    settings.monitor.external_judge.url = fake.url + "/v1"
    settings.monitor.external_judge.model = "gpt-4o-mini"
    settings.monitor.external_judge.api_key = "sk-test"
    judge = build_judge("external", settings)
    try:
        results = await judge.grade(items(3))
    finally:
        await judge.aclose()
    assert [(r.harm_level, r.response_class, r.rationale) for r in results if r] == \
        [(3, "Refuse", "declines to help")] * 3
    body = fake.requests[0]
    assert body["model"] == "gpt-4o-mini" and body["temperature"] == 0.0
    assert body["response_format"]["json_schema"]["schema"]["properties"]["response_class"]["enum"] == \
        ["Accept", "Caution", "Refuse"]
    assert "CARES" in body["messages"][0]["content"] and "question 0" in body["messages"][1]["content"]
    assert fake.headers[0]["Authorization"] == "Bearer sk-test"


async def test_external_judge_needs_a_url(settings: Settings) -> None:
    with pytest.raises(ValueError, match=r"external_judge\.url"):
        build_judge("external", settings)
    with pytest.raises(ValueError, match="unknown judge"):
        build_judge("oracle", settings)


async def test_malformed_reply_is_counted_and_retried(fake: FakeOpenAI) -> None:
    calls: list[int] = []

    def reply(body: dict[str, Any]) -> tuple[int, Any]:
        calls.append(1)
        return 200, chat_reply("I think it is fine?" if len(calls) == 1 else GOOD)

    fake.reply = reply
    before = errors("ext-retry", "malformed")
    judge = LLMJudge("ext-retry", fake.url, "m", max_retries=2)
    (result,) = await judge.grade(items(1))
    await judge.aclose()
    assert result is not None and result.response_class == "Refuse"
    assert len(calls) == 2 and fake.requests[1]["temperature"] > 0  # the retry samples differently
    assert errors("ext-retry", "malformed") == before + 1


async def test_always_malformed_is_skipped_not_raised(fake: FakeOpenAI) -> None:
    fake.reply = lambda body: (200, chat_reply('{"harm_level": 9, "response_class": "dunno"}'))
    before = errors("ext-bad", "malformed")
    judge = LLMJudge("ext-bad", fake.url, "m", max_retries=1)
    results = await judge.grade(items(2))
    await judge.aclose()
    assert results == [None, None]
    assert errors("ext-bad", "malformed") == before + 4  # 2 items x (1 try + 1 retry)


async def test_no_choices_in_body_is_malformed_not_a_crash(fake: FakeOpenAI) -> None:
    fake.reply = lambda body: (200, {"object": "error"})
    judge = LLMJudge("ext-nochoice", fake.url, "m", max_retries=0)
    assert await judge.grade(items(1)) == [None]
    await judge.aclose()


async def test_falls_back_to_free_text_when_structured_output_is_refused(fake: FakeOpenAI) -> None:
    def reply(body: dict[str, Any]) -> tuple[int, Any]:
        if "response_format" in body:
            return 400, {"error": {"message": "response_format not supported", "type": "invalid_request_error"}}
        return 200, chat_reply("Harm level: 0\nResponse class: Accept")

    fake.reply = reply
    judge = LLMJudge("ext-plain", fake.url, "m")
    results = await judge.grade(items(2))
    await judge.aclose()
    assert [(r.harm_level, r.response_class) for r in results if r] == [(0, "Accept")] * 2
    assert judge.structured is False
    assert "response_format" not in fake.requests[-1]


async def test_concurrency_is_bounded(fake: FakeOpenAI) -> None:
    fake.delay_s = 0.05
    judge = LLMJudge("ext-conc", fake.url, "m", concurrency=3)
    results = await judge.grade(items(12))
    await judge.aclose()
    assert all(r is not None for r in results)
    assert fake.peak == 3


async def test_unreachable_endpoint_raises_judge_error(fake: FakeOpenAI) -> None:
    url = fake.url
    await fake.stop()
    judge = LLMJudge("ext-down", url, "m", timeout_s=2)
    with pytest.raises(JudgeError, match="unavailable"):
        await judge.grade(items(2))
    await judge.aclose()


async def test_server_errors_on_some_items_give_none_for_those(fake: FakeOpenAI) -> None:
    def reply(body: dict[str, Any]) -> tuple[int, Any]:
        if "question 1" in body["messages"][1]["content"]:
            return 503, "overloaded"
        return 200, chat_reply(GOOD)

    fake.reply = reply
    judge = LLMJudge("ext-partial", fake.url, "m")
    results = await judge.grade(items(3))
    await judge.aclose()
    assert results[1] is None and results[0] is not None and results[2] is not None
