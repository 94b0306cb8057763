"""A `Record` turned into the exchange row the store keeps: response parsed, identifiers redacted."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from careloop.gateway.record import Record
from careloop.gateway.redact import redact, redact_messages, redact_params

# Request fields that are not stored as parameters (the messages have their own column; the user id is hashed).
_NOT_PARAMS = frozenset({"messages", "user", "stream_options"})
MAX_TEXT = 200_000  # characters of response text stored per exchange


def _usage(obj: dict[str, Any]) -> tuple[int | None, int | None]:
    usage = obj.get("usage")
    if isinstance(usage, dict):
        return usage.get("prompt_tokens"), usage.get("completion_tokens")
    return None, None


def parse_response(body: bytes) -> tuple[str | None, str | None, int | None, int | None]:
    """(text, finish_reason, prompt_tokens, completion_tokens) of a non-streamed chat completion."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None, None, None
    if not isinstance(obj, dict):
        return None, None, None, None
    text = finish = None
    choices = obj.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        message = choices[0].get("message") or {}
        text = message.get("content") if isinstance(message, dict) else None
        finish = choices[0].get("finish_reason")
    prompt, completion = _usage(obj)
    return text, finish, prompt, completion


def parse_stream(chunks: list[bytes]) -> tuple[str, str | None, int | None, int | None]:
    """(text, finish_reason, prompt_tokens, completion_tokens) assembled from SSE chunks.

    Token counts come from the usage chunk when there is one; otherwise completion tokens are the number of
    content deltas (vLLM sends one token per delta) and prompt tokens are unknown.
    """
    texts: list[str] = []
    finish: str | None = None
    prompt = completion = None
    deltas = 0
    for line in b"".join(chunks).split(b"\n"):
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if not payload or payload == b"[DONE]":
            continue
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(obj, dict):
            continue
        for choice in obj.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            piece = delta.get("content") if isinstance(delta, dict) else None
            if piece:
                texts.append(piece)
                deltas += 1
            if choice.get("finish_reason"):
                finish = choice["finish_reason"]
        p, c = _usage(obj)
        if p is not None or c is not None:
            prompt, completion = p, c
    if completion is None and deltas:
        completion = deltas
    return "".join(texts), finish, prompt, completion


def build_row(record: Record) -> dict[str, Any]:
    """The exchange row for a record: response parsed, identifiers redacted."""
    text: str | None
    prompt = completion = None
    finish = None
    if record.status == 200 and record.response is not None:
        if isinstance(record.response, list):
            text, finish, prompt, completion = parse_stream(record.response)
        else:
            text, finish, prompt, completion = parse_response(record.response)
    else:
        text = record.error
        if text is None and isinstance(record.response, bytes):
            text = record.response[:2000].decode("utf-8", "replace")
        finish = "error"
    if text is not None:
        text = redact(text[:MAX_TEXT])
    req = record.request
    params = redact_params({k: v for k, v in req.items() if k not in _NOT_PARAMS})
    asked = req.get("model")
    if record.target == "none" and isinstance(asked, str) and asked != record.public_model:
        params["requested_model"] = redact(asked[:256])  # a rejected request's model name, redacted
    params["model"] = record.public_model
    sampled = record.sampled and record.status == 200 and bool(text)
    return {
        "id": record.id,
        "created_at": datetime.fromtimestamp(record.created, UTC),
        "public_model": record.public_model,
        "target": record.target,
        "role": record.role,
        "user_key": record.user_key,
        "request_messages": redact_messages(req.get("messages")),
        "request_params": params,
        "response_text": text,
        "finish_reason": finish if isinstance(finish, str) else None,
        "prompt_tokens": prompt if isinstance(prompt, int) else None,
        "completion_tokens": completion if isinstance(completion, int) else None,
        "latency_ms": round(record.latency_ms, 3),
        "status": record.status,
        "stream": record.stream,
        "sampled": sampled,
        "judge_state": "pending" if sampled else "none",
        "claimed_by": None,
        "claimed_at": None,
        "request_id": record.request_id,
        "trace_id": record.trace_id,
        "key_name": record.key_name,
        "text_purged_at": None,
    }
