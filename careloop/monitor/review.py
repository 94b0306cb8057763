"""Human review: a queue of sampled exchanges (judge disagreements first), human verdicts, live κ vs human.

People label exchanges through `careloop review` or `GET/POST /admin/review` (bearer token). Their label is
stored as the verdict of judge `human`, the gold standard for `judge audit --data store` and for
`careloop_judge_kappa{judge, reference="human"}`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from careloop.core.admin_auth import admin_refusal
from careloop.core.messages import last_user_message
from careloop.core.schema import HUMAN, Exchange, Verdict, utcnow
from careloop.core.store import session_scope
from careloop.monitor.scoring import RESPONSE_CLASSES, cohen_kappa, normalize_class, safety_score

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from careloop.core.settings import Settings


class ReviewError(ValueError):
    """A review label that cannot be stored (unknown exchange, bad level or class)."""


@dataclass
class ReviewItem:
    """A sampled exchange waiting for a person's label, with what the judges said."""

    exchange_id: str
    created_at: str
    adapter: str
    messages: list[dict[str, Any]]
    response: str
    verdicts: dict[str, dict[str, Any]] = field(default_factory=dict)  # judge -> {harm_level, response_class}
    disagreement: bool = False

    @property
    def prompt(self) -> str:
        """The last user message."""
        return last_user_message(self.messages)


def review_queue(engine: Engine, limit: int = 20, scan: int = 2000) -> list[ReviewItem]:
    """Sampled exchanges without a human label: judge disagreements first, then judged, then unjudged; newest first.

    Looks at the `scan` newest sampled exchanges (the queue is a sample for people, not a full backlog).
    """
    with Session(engine) as session:
        exchanges = session.exec(
            select(Exchange).where(col(Exchange.sampled).is_(True))
            .order_by(col(Exchange.created_at).desc()).limit(scan)).all()
        ids = [e.id for e in exchanges]
        verdicts: list[Verdict] = []
        for start in range(0, len(ids), 500):
            verdicts += session.exec(select(Verdict).where(col(Verdict.exchange_id).in_(ids[start:start + 500]))
                                     .order_by(col(Verdict.id))).all()
    by_ex: dict[str, dict[str, Verdict]] = defaultdict(dict)
    for v in verdicts:
        by_ex[v.exchange_id][v.judge] = v  # the latest verdict of each judge wins
    items: list[tuple[int, int, ReviewItem]] = []
    for rank, ex in enumerate(exchanges):
        judged = by_ex.get(ex.id, {})
        if HUMAN in judged:
            continue
        item = review_item(ex, judged)
        priority = 0 if item.disagreement else (1 if judged else 2)
        items.append((priority, rank, item))
    items.sort(key=lambda t: (t[0], t[1]))
    return [it for _, _, it in items[:limit]]


def review_item(ex: Exchange, judged: dict[str, Verdict]) -> ReviewItem:
    """An exchange with its judges' latest verdicts (judge -> verdict) as a ReviewItem."""
    classes = {v.response_class for v in judged.values()}
    levels = {min(v.harm_level, 1) for v in judged.values()}  # harmless vs harmful
    return ReviewItem(
        exchange_id=ex.id, created_at=ex.created_at.isoformat(), adapter=ex.target,
        messages=list(ex.request_messages or []), response=ex.response_text or "",
        verdicts={j: {"harm_level": v.harm_level, "response_class": v.response_class,
                      "rationale": v.rationale} for j, v in judged.items()},
        disagreement=len(classes) > 1 or len(levels) > 1)


def check_label(harm_level: object, response_class: object) -> tuple[int, str]:
    """A person's label as (harm level 0-3, canonical response class); ReviewError when it is not one."""
    try:
        level = int(harm_level)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise ReviewError(f"harm_level must be 0-3, got {harm_level!r}") from None
    if level not in (0, 1, 2, 3):
        raise ReviewError(f"harm_level must be 0-3, got {level}")
    try:
        cls = normalize_class(str(response_class))
    except ValueError:
        raise ReviewError(f"response_class must be one of {', '.join(RESPONSE_CLASSES)}, "
                          f"got {response_class!r}") from None
    return level, cls


def record_human_verdict(engine: Engine, exchange_id: str, harm_level: int, response_class: str,
                         reviewer: str = "operator", note: str | None = None) -> Verdict:
    """Store (or replace) a person's label of an exchange as the verdict of judge `human`."""
    level, cls = check_label(harm_level, response_class)
    with session_scope(engine) as session:
        # write first, look second: the delete waits behind a purge that holds verdict writes up
        # (core.retention.hold_verdicts) and holds up a later one, so the exchange found below stays till commit
        session.exec(delete(Verdict).where(col(Verdict.exchange_id) == exchange_id, col(Verdict.judge) == HUMAN))
        ex = session.get(Exchange, exchange_id)
        if ex is None:  # the delete above is rolled back
            raise ReviewError(f"no exchange {exchange_id!r} (never stored, or removed by retention)")
        verdict = Verdict(exchange_id=exchange_id, adapter=ex.target, judge=HUMAN,
                          judge_version=reviewer[:64], harm_level=level, response_class=cls,
                          score=safety_score(level, cls), rationale=note, created_at=utcnow())
        session.add(verdict)
    return verdict


def human_pairs(engine: Engine, judge: str, adapter: str | None = None) -> list[tuple[Verdict, Verdict]]:
    """(human verdict, judge verdict) on every exchange both graded (the latest of each)."""
    with Session(engine) as session:
        human = session.exec(select(Verdict).where(Verdict.judge == HUMAN)).all()
        if not human:
            return []
        ids = [v.exchange_id for v in human]
        theirs: list[Verdict] = []
        for start in range(0, len(ids), 500):
            q = select(Verdict).where(Verdict.judge == judge,
                                      col(Verdict.exchange_id).in_(ids[start:start + 500]))
            theirs += session.exec(q.order_by(col(Verdict.id))).all()
    latest = {v.exchange_id: v for v in theirs}
    out = []
    for h in human:
        j = latest.get(h.exchange_id)
        if j is not None and (adapter is None or h.adapter == adapter):
            out.append((h, j))
    return out


def human_kappa(engine: Engine, judge: str, adapter: str | None = None, min_pairs: int = 2) -> float | None:
    """Cohen's κ on response class between a judge and the human labels (None with too few pairs)."""
    pairs = human_pairs(engine, judge, adapter)
    if len(pairs) < min_pairs:
        return None
    return cohen_kappa([h.response_class for h, _ in pairs], [j.response_class for _, j in pairs])


def human_examples(engine: Engine) -> list[Any]:
    """Exchanges with a human label as LabelledExamples (what `judge audit --data store` grades)."""
    from careloop.monitor.datasets import LabelledExample

    with Session(engine) as session:
        rows = session.exec(select(Verdict, Exchange).where(Verdict.judge == HUMAN)
                            .join(Exchange, col(Exchange.id) == col(Verdict.exchange_id))).all()
    return [LabelledExample(id=ex.id, messages=list(ex.request_messages or []), response=ex.response_text or "",
                            response_class=v.response_class, harm_level=v.harm_level, source="store",
                            group=ex.target, meta={"reviewer": v.judge_version}) for v, ex in rows]


# ---------------------------------------------------------------------------------------------------------------
# HTTP


def review_routes(settings: Settings, engine: Engine) -> list[Route]:
    """Starlette routes `GET /admin/review` (the queue) and `POST /admin/review` (a label), bearer token."""
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    def error(status: int, message: str, type_: str, code: str) -> Response:
        return JSONResponse({"error": {"message": message, "type": type_, "code": code, "param": None}},
                            status_code=status)

    def authorize(request: Request) -> Response | None:
        refusal = admin_refusal(request.headers.get("authorization"), settings.admin_token)
        return error(*refusal) if refusal is not None else None

    async def list_queue(request: Request) -> Response:
        denied = authorize(request)
        if denied:
            return denied
        try:
            limit = int(request.query_params.get("limit", settings.monitor.review_sample_size))
        except ValueError:
            return error(400, "limit must be an integer", "invalid_request_error", "invalid_limit")
        limit = max(1, min(limit, 500))
        import asyncio

        items = await asyncio.to_thread(review_queue, engine, limit)
        return JSONResponse({"object": "list", "data": [asdict(i) for i in items]})

    async def label(request: Request) -> Response:
        denied = authorize(request)
        if denied:
            return denied
        try:
            body = await request.json()
        except ValueError:
            return error(400, "the request body is not valid JSON", "invalid_request_error", "invalid_json")
        if not isinstance(body, dict):
            return error(400, "the request body must be a JSON object", "invalid_request_error", "invalid_type")
        missing = [k for k in ("exchange_id", "harm_level", "response_class") if k not in body]
        if missing:
            return error(400, f"missing field(s): {', '.join(missing)}", "invalid_request_error", "missing_field")
        import asyncio

        reviewer, note = str(body.get("reviewer") or "operator"), body.get("note")
        try:
            v = await asyncio.to_thread(record_human_verdict, engine, str(body["exchange_id"]), body["harm_level"],
                                        body["response_class"], reviewer, note)
        except ReviewError as exc:
            status = 404 if str(exc).startswith("no exchange") else 400
            return error(status, str(exc), "invalid_request_error",
                         "not_found" if status == 404 else "invalid_label")
        from careloop.core.audit_trail import TOKEN_ACTOR, Actor, record

        await asyncio.to_thread(record, engine, Actor(TOKEN_ACTOR, "admin"), "label", v.exchange_id, note or "",
                                {"harm_level": v.harm_level, "response_class": v.response_class,
                                 "reviewer": reviewer})
        return JSONResponse({"exchange_id": v.exchange_id, "judge": HUMAN, "harm_level": v.harm_level,
                             "response_class": v.response_class, "score": v.score}, status_code=201)

    return [Route("/admin/review", list_queue, methods=["GET"]),
            Route("/admin/review", label, methods=["POST"])]
