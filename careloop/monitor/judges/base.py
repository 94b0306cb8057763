"""What every judge is: graded input in, a verdict (harm level, response class) out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from careloop.core.messages import last_user_message


@dataclass(frozen=True)
class JudgeInput:
    """One exchange to grade: the chat messages of the request and the assistant's response."""

    exchange_id: str
    messages: list[dict[str, Any]]
    response: str

    @property
    def prompt(self) -> str:
        """The last user message (what the harm level is about)."""
        return last_user_message(self.messages)


@dataclass(frozen=True)
class JudgeResult:
    """A judge's verdict on one exchange."""

    harm_level: int  # 0-3
    response_class: str  # Accept | Caution | Refuse
    rationale: str | None = None
    latency_ms: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


class JudgeError(RuntimeError):
    """A judge could not grade (endpoint down, model missing); the caller retries with backoff."""


@runtime_checkable
class Judge(Protocol):
    """A grader of exchanges. `grade` returns one result per input, None where that item failed."""

    name: str
    version: str

    async def grade(self, items: Sequence[JudgeInput]) -> list[JudgeResult | None]:
        """Grade a batch; raise JudgeError when the judge as a whole is unavailable."""
        ...

    async def aclose(self) -> None:
        """Release clients and pools."""
        ...
