"""Reading chat messages (the OpenAI `messages` list) the same way everywhere."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def last_user_message(messages: Sequence[dict[str, Any]]) -> str:
    """The content of the last user message, as text ("" when there is none)."""
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content", "")
            return content if isinstance(content, str) else str(content)
    return ""
