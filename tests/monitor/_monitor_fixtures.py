"""Helpers the monitor tests share: a store, exchanges and verdicts written as the gateway/worker would, and
small in-test judges behind the real Judge protocol."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.engine import Engine

from careloop.core.schema import Exchange, Verdict, utcnow
from careloop.core.store import init_db, insert_exchanges, make_engine
from careloop.monitor.judges.base import JudgeError, JudgeInput, JudgeResult
from careloop.monitor.scoring import safety_score


def store(url: str) -> Engine:
    """A store with every table."""
    engine = make_engine(url)
    init_db(engine)
    return engine


def exchange_row(prompt: str, response: str | None, *, target: str = "smollm2-135m", sampled: bool = True,
                 state: str = "pending", created_at: datetime | None = None,
                 ex_id: str | None = None) -> dict[str, Any]:
    """An exchange row as the gateway's traffic log writes it."""
    return {
        "id": ex_id or uuid.uuid4().hex, "created_at": created_at or utcnow(), "public_model": "assistant",
        "target": target, "role": "stable", "user_key": None,
        "request_messages": [{"role": "user", "content": prompt}], "request_params": {},
        "response_text": response, "finish_reason": "stop", "prompt_tokens": 10, "completion_tokens": 20,
        "latency_ms": 50.0, "status": 200, "stream": False, "sampled": sampled,
        "judge_state": state if sampled else "none", "claimed_by": None, "claimed_at": None,
    }


def add_exchanges(engine: Engine, rows: Iterable[dict[str, Any]]) -> list[str]:
    """Insert exchange rows; returns their ids."""
    batch = list(rows)
    insert_exchanges(engine, batch)
    return [r["id"] for r in batch]


def add_verdicts(engine: Engine, graded: Sequence[tuple[int, str]], *, adapter: str = "stable-a",
                 judge: str = "ref", exchange_ids: Sequence[str] | None = None,
                 created_at: datetime | None = None, step_s: float = 0.0) -> list[str]:
    """Insert verdicts (with their exchanges) for (harm level, class) pairs; returns the exchange ids."""
    ids = list(exchange_ids) if exchange_ids is not None else [uuid.uuid4().hex for _ in graded]
    start = created_at or utcnow()
    if exchange_ids is None:
        add_exchanges(engine, [exchange_row("p", "r", target=adapter, state="done", ex_id=i,
                                            created_at=start) for i in ids])
    rows = [{
        "exchange_id": ex, "created_at": start + timedelta(seconds=k * step_s), "adapter": adapter, "judge": judge,
        "judge_version": "t", "harm_level": h, "response_class": c, "score": safety_score(h, c),
        "rationale": None, "latency_ms": 1.0,
    } for k, (ex, (h, c)) in enumerate(zip(ids, graded, strict=True))]
    if rows:
        with engine.begin() as conn:
            conn.execute(Verdict.metadata.tables["verdict"].insert(), rows)
    return ids


def exchange_states(engine: Engine) -> dict[str, str]:
    """judge_state of every exchange."""
    from sqlmodel import Session, select

    with Session(engine) as s:
        return {e.id: e.judge_state for e in s.exec(select(Exchange)).all()}


class RuleJudge:
    """A judge that grades by a function of the input (an in-test stand-in with the real protocol)."""

    def __init__(self, name: str, rule: Callable[[JudgeInput], tuple[int, str]], version: str = "1") -> None:
        self.name = name
        self.version = version
        self.rule = rule
        self.calls = 0
        self.closed = False

    async def grade(self, items: Sequence[JudgeInput]) -> list[JudgeResult | None]:
        self.calls += 1
        return [JudgeResult(*self.rule(i)) for i in items]

    async def aclose(self) -> None:
        self.closed = True


class BrokenJudge(RuleJudge):
    """A judge whose endpoint is down."""

    def __init__(self, name: str = "broken") -> None:
        super().__init__(name, lambda _: (0, "Accept"))

    async def grade(self, items: Sequence[JudgeInput]) -> list[JudgeResult | None]:
        self.calls += 1
        raise JudgeError("endpoint down")


class FlakyJudge(RuleJudge):
    """Fails the first `failures` calls, and returns None for items whose response contains 'garbled' once."""

    def __init__(self, name: str, rule: Callable[[JudgeInput], tuple[int, str]], failures: int = 1) -> None:
        super().__init__(name, rule)
        self.failures = failures
        self.garbled_seen: set[str] = set()

    async def grade(self, items: Sequence[JudgeInput]) -> list[JudgeResult | None]:
        self.calls += 1
        if self.calls <= self.failures:
            raise JudgeError("temporarily down")
        out: list[JudgeResult | None] = []
        for i in items:
            if "garbled" in i.response and i.exchange_id not in self.garbled_seen:
                self.garbled_seen.add(i.exchange_id)
                out.append(None)
            else:
                out.append(JudgeResult(*self.rule(i)))
        return out


def keyword_rule(item: JudgeInput) -> tuple[int, str]:
    """harm 3 if the prompt says 'harm', class from the response's first word."""
    harm = 3 if "harm" in item.prompt else 0
    word = item.response.split()[0].lower().strip(",.!") if item.response else "accept"
    cls = {"sorry": "Refuse", "careful": "Caution"}.get(word, "Accept")
    return harm, cls


class ServerThread:
    """A real uvicorn server for an ASGI app on a loopback port, in a background thread."""

    def __init__(self, app: Any, port: int) -> None:
        import threading

        import uvicorn

        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                                   lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        import time

        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
