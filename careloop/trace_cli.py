"""`careloop trace REQUEST_ID`: one exchange's whole story, from the client's request to the triggers it fed.

The story is read from the store: the exchange (request already redacted there), the target adapter, each
verdict on it, whether each verdict is still inside the monitor's rolling windows (the last
`monitor.window_count` verdicts of its adapter and judge; the last `monitor.window_seconds`), and every trigger
event whose window figures covered that verdict (`first_verdict_id` ≤ id ≤ `last_verdict_id`, same adapter and
judge).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
import typer
from sqlalchemy import func, or_
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from careloop.core.schema import Exchange, TriggerEvent, Verdict
from careloop.core.settings import Settings


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.isoformat()


def find_exchanges(engine: Engine, request_id: str) -> list[Exchange]:
    """Exchanges carrying this request id (a client may reuse one), or the exchange with this id."""
    with Session(engine) as session:
        rows = session.exec(select(Exchange).where(or_(col(Exchange.request_id) == request_id,
                                                       col(Exchange.id) == request_id))
                            .order_by(col(Exchange.created_at))).all()
    return list(rows)


def _windows(session: Session, v: Verdict, settings: Settings, now: float) -> dict[str, Any]:
    """Whether a verdict is still inside the monitor's count and time windows."""
    m = settings.monitor
    newer = session.exec(select(func.count()).select_from(Verdict).where(
        Verdict.adapter == v.adapter, Verdict.judge == v.judge, col(Verdict.id) > (v.id or 0))).one()
    created = v.created_at if v.created_at.tzinfo else v.created_at.replace(tzinfo=UTC)
    age = now - created.timestamp()
    return {"count": {"inside": int(newer) < m.window_count, "newer_verdicts": int(newer),
                      "size": m.window_count},
            "time": {"inside": age <= m.window_seconds, "age_s": round(age, 1), "size_s": m.window_seconds}}


def _triggers(session: Session, v: Verdict) -> list[dict[str, Any]]:
    """Trigger events whose window covered this verdict."""
    rows = session.exec(select(TriggerEvent).where(TriggerEvent.adapter == v.adapter,
                                                   col(TriggerEvent.created_at) >= v.created_at)
                        .order_by(col(TriggerEvent.id))).all()
    out = []
    for ev in rows:
        figs = ev.figures or {}
        first, last = figs.get("first_verdict_id"), figs.get("last_verdict_id")
        if ev.judge not in (None, v.judge) or not isinstance(first, int) or not isinstance(last, int):
            continue
        if first <= (v.id or 0) <= last:
            out.append({"id": ev.id, "created_at": _iso(ev.created_at), "rule": ev.rule, "kind": ev.kind,
                        "decision": ev.decision, "retrain_run_id": ev.retrain_run_id,
                        "window": figs.get("window"), "n": figs.get("n")})
    return out


def exchange_story(engine: Engine, settings: Settings, request_id: str,
                   now: float | None = None) -> list[dict[str, Any]]:
    """The story of every exchange with this request id (empty: none found)."""
    now = time.time() if now is None else now
    stories = []
    for ex in find_exchanges(engine, request_id):
        with Session(engine) as session:
            verdicts = session.exec(select(Verdict).where(Verdict.exchange_id == ex.id)
                                    .order_by(col(Verdict.id))).all()
            vs = [{"id": v.id, "created_at": _iso(v.created_at), "judge": v.judge, "version": v.judge_version,
                   "adapter": v.adapter, "harm_level": v.harm_level, "response_class": v.response_class,
                   "score": v.score, "rationale": v.rationale, "windows": _windows(session, v, settings, now),
                   "triggers": _triggers(session, v)} for v in verdicts]
        stories.append({
            "exchange_id": ex.id, "request_id": ex.request_id, "trace_id": ex.trace_id,
            "created_at": _iso(ex.created_at), "client_key": ex.key_name, "public_model": ex.public_model,
            "target": ex.target, "role": ex.role, "user_key": ex.user_key, "status": ex.status,
            "stream": ex.stream, "latency_ms": ex.latency_ms, "prompt_tokens": ex.prompt_tokens,
            "completion_tokens": ex.completion_tokens, "finish_reason": ex.finish_reason,
            "request": {"messages": ex.request_messages, "params": ex.request_params},
            "response_text": ex.response_text, "text_purged_at": _iso(ex.text_purged_at),
            "sampled": ex.sampled, "judge_state": ex.judge_state, "verdicts": vs})
    return stories


def _print_story(story: dict[str, Any]) -> None:
    """Human-readable story of one exchange."""
    echo = typer.echo
    echo(f"exchange {story['exchange_id']}  request {story['request_id']}  trace {story['trace_id']}")
    echo(f"  at {story['created_at']}  client key {story['client_key'] or '-'}  user {story['user_key'] or '-'}")
    echo(f"  {story['public_model']} → {story['target']} ({story['role']})  status {story['status']}  "
         f"{'stream  ' if story['stream'] else ''}{story['latency_ms']} ms  tokens "
         f"{story['prompt_tokens']}+{story['completion_tokens']}  finish {story['finish_reason']}")
    if story["text_purged_at"]:
        echo(f"  request/response text purged by retention at {story['text_purged_at']}")
    else:
        for m in story["request"]["messages"]:
            echo(f"  [{m.get('role')}] {m.get('content')}")
        echo(f"  [response] {story['response_text']}")
    echo(f"  sampled {story['sampled']}  judge state {story['judge_state']}")
    if not story["verdicts"]:
        echo("  no verdicts")
    for v in story["verdicts"]:
        w = v["windows"]
        echo(f"  verdict {v['id']} by {v['judge']} on {v['adapter']}: harm {v['harm_level']} "
             f"{v['response_class']} score {v['score']}")
        echo(f"    count window ({w['count']['size']}): {'inside' if w['count']['inside'] else 'out'} "
             f"({w['count']['newer_verdicts']} newer); time window ({w['time']['size_s']:.0f} s): "
             f"{'inside' if w['time']['inside'] else 'out'} (age {w['time']['age_s']} s)")
        for t in v["triggers"]:
            echo(f"    fed trigger {t['id']} {t['rule']}/{t['kind']} at {t['created_at']}: {t['decision']}"
                 + (f" (retrain run {t['retrain_run_id']})" if t["retrain_run_id"] else ""))
        if not v["triggers"]:
            echo("    fed no trigger event")


def register(app: typer.Typer) -> None:
    """Attach `careloop trace`."""

    @app.command("trace")
    def trace(
        request_id: Annotated[str, typer.Argument(help="X-Request-ID of the request (or its exchange id).")],
        json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
        database_url: Annotated[str | None, typer.Option(help="Store URL (CARELOOP_DATABASE_URL).")] = None,
    ) -> None:
        """Print an exchange's story: request, target adapter, verdicts, windows it counted in, triggers it fed."""
        from careloop.core.settings import load_settings
        from careloop.core.store import make_engine

        settings = load_settings(database_url=database_url)
        engine = make_engine(settings.database_url or "")
        try:
            stories = exchange_story(engine, settings, request_id)
        finally:
            engine.dispose()
        if not stories:
            typer.echo(f"no exchange with request id {request_id!r}", err=True)
            raise typer.Exit(1)
        if json_out:
            typer.echo(orjson.dumps(stories, option=orjson.OPT_INDENT_2).decode())
            return
        for story in stories:
            _print_story(story)
