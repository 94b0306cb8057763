"""The console's review sample: what people label, why it was drawn, and each person's label.

Each draw takes a share of the candidates uniformly at random (kind `random`: an unbiased sample, so κ on those
labels estimates the judges' κ on all traffic) and fills the rest with the items people help most on (kind
`disagreement`: the judges disagree; then `uncertain`: the reference judge's least confident verdicts). Labels
keep the kind they were drawn under, so the two kinds are never mixed up when κ is computed. A share of the
drawn items also wants a second person's label (agreement between people). The first person's label is stored
as the `human` verdict through `monitor.review.record_human_verdict`, exactly as `careloop review` stores it.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field

from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from careloop.core.schema import HUMAN, Exchange, ReviewLabel, ReviewSample, Verdict, utcnow
from careloop.core.settings import ConsoleSettings
from careloop.monitor.review import (
    ReviewError,
    ReviewItem,
    check_label,
    record_human_verdict,
    review_item,
    review_queue,
)

KINDS = ("disagreement", "uncertain", "random")  # the order people see them in
TARGETED = ("disagreement", "uncertain")
_PROBABILITY = re.compile(r"p\((Accept|Caution|Refuse)\)=([0-9]*\.?[0-9]+)")


def verdict_confidence(rationale: str | None) -> float | None:
    """The class probability a judge states in its rationale (`p(Refuse)=0.62`; the distilled judge does)."""
    match = _PROBABILITY.search(rationale or "")
    return float(match.group(2)) if match else None


def _unit(exchange_id: str, salt: str) -> float:
    """A fixed pseudo-random number in [0, 1) for an exchange: the same draw whoever asks, whenever."""
    digest = hashlib.sha256(f"{salt}:{exchange_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def draw(engine: Engine, cfg: ConsoleSettings, reference_judge: str, size: int | None = None) -> dict[str, int]:
    """Draw up to `size` (default review_batch) new exchanges into the review sample; returns counts by kind."""
    size = cfg.review_batch if size is None else size
    with Session(engine) as session:
        drawn = set(session.exec(select(ReviewSample.exchange_id)).all())
    candidates = [it for it in review_queue(engine, limit=cfg.review_scan, scan=cfg.review_scan)
                  if it.exchange_id not in drawn and it.response]
    n_random = round(size * cfg.review_random_share)
    # Random first, over every candidate, so targeted items are as likely as any to land in the random sample.
    by_lot = sorted(candidates, key=lambda it: _unit(it.exchange_id, "random"))
    chosen: list[tuple[ReviewItem, str]] = [(it, "random") for it in by_lot[:n_random]]
    taken = {it.exchange_id for it, _ in chosen}
    rest = [it for it in candidates if it.exchange_id not in taken]
    targeted: list[tuple[ReviewItem, str]] = [(it, "disagreement") for it in rest if it.disagreement]
    unsure = []
    for it in rest:
        ref = it.verdicts.get(reference_judge)
        conf = verdict_confidence(ref.get("rationale")) if ref else None
        if not it.disagreement and conf is not None and conf < cfg.review_uncertain_below:
            unsure.append((conf, it))
    targeted += [(it, "uncertain") for _, it in sorted(unsure, key=lambda t: t[0])]
    chosen += targeted[: size - len(chosen)]
    now = utcnow()
    with Session(engine) as session:
        for it, kind in chosen:
            session.add(ReviewSample(exchange_id=it.exchange_id, kind=kind, drawn_at=now,
                                     double=_unit(it.exchange_id, "double") < cfg.second_review_share))
        session.commit()
    return dict(Counter(kind for _, kind in chosen))


@dataclass
class QueueEntry:
    """One exchange for one person to label now, with what the judges said and why it was drawn."""

    item: ReviewItem
    kind: str
    second: bool  # someone else labelled it already; this label measures agreement between people
    open_by_kind: dict[str, int] = field(default_factory=dict)


def _open_for(session: Session, reviewer: str) -> list[tuple[str, str, bool]]:
    """(exchange id, kind, second) of every sampled exchange `reviewer` should label, in showing order."""
    samples = session.exec(select(ReviewSample)).all()
    counts: dict[str, int] = dict(session.exec(  # type: ignore[arg-type]
        select(ReviewLabel.exchange_id, func.count()).group_by(ReviewLabel.exchange_id)).all())
    mine = set(session.exec(select(ReviewLabel.exchange_id).where(ReviewLabel.reviewer == reviewer)).all())
    # Labelled elsewhere (`careloop review`, the admin API) before anyone labelled it here: done.
    human = set(session.exec(select(Verdict.exchange_id).join(
        ReviewSample, col(ReviewSample.exchange_id) == col(Verdict.exchange_id)).where(Verdict.judge == HUMAN)).all())
    out = []
    for s in samples:
        n = counts.get(s.exchange_id, 0)
        if s.exchange_id in mine or (n == 0 and s.exchange_id in human):
            continue
        if n == 0 or (s.double and n == 1):
            out.append((s.drawn_at, KINDS.index(s.kind) if s.kind in KINDS else len(KINDS), s.exchange_id,
                        s.kind, n == 1))
    out.sort(key=lambda t: (t[1], t[0], t[2]))
    return [(eid, kind, second) for _, _, eid, kind, second in out]


def _item(engine: Engine, exchange_id: str) -> ReviewItem | None:
    with Session(engine) as session:
        ex = session.get(Exchange, exchange_id)
        if ex is None:
            return None
        verdicts = session.exec(select(Verdict).where(Verdict.exchange_id == exchange_id, Verdict.judge != HUMAN)
                                .order_by(col(Verdict.id))).all()
    return review_item(ex, {v.judge: v for v in verdicts})  # the latest verdict of each judge wins


def next_for(engine: Engine, cfg: ConsoleSettings, reference_judge: str, reviewer: str,
             skip: frozenset[str] = frozenset()) -> QueueEntry | None:
    """The next exchange `reviewer` should label (drawing more into the sample when it runs dry)."""
    for attempt in range(2):
        with Session(engine) as session:
            open_items = [t for t in _open_for(session, reviewer) if t[0] not in skip]
        if open_items or attempt:
            break
        draw(engine, cfg, reference_judge)
    if not open_items:
        return None
    eid, kind, second = open_items[0]
    item = _item(engine, eid)
    if item is None:
        return None
    return QueueEntry(item, kind, second, dict(Counter(k for _, k, _ in open_items)))


def entry_for(engine: Engine, exchange_id: str) -> QueueEntry | None:
    """One exchange as a queue entry, labelled or not (to look at it again, or to correct a label)."""
    item = _item(engine, exchange_id)
    if item is None:
        return None
    with Session(engine) as session:
        sample = session.get(ReviewSample, exchange_id)
    return QueueEntry(item, sample.kind if sample is not None else "other", False)


def label(engine: Engine, reviewer: str, exchange_id: str, harm_level: object, response_class: object,
          note: str | None = None) -> ReviewLabel:
    """Store `reviewer`'s label; the exchange's first label is also its `human` verdict (monitor.review)."""
    level, cls = check_label(harm_level, response_class)
    note = (note or "").strip()[:2000] or None
    with Session(engine, expire_on_commit=False) as session:
        if session.get(Exchange, exchange_id) is None:
            raise ReviewError(f"no exchange {exchange_id!r}")
        sample = session.get(ReviewSample, exchange_id)
        labels = session.exec(select(ReviewLabel).where(ReviewLabel.exchange_id == exchange_id)
                              .order_by(col(ReviewLabel.id))).all()
        mine = next((lab for lab in labels if lab.reviewer == reviewer), None)
        first = not labels or labels[0].reviewer == reviewer
        row = mine or ReviewLabel(exchange_id=exchange_id, reviewer=reviewer,
                                  kind=sample.kind if sample is not None else "other",
                                  harm_level=level, response_class=cls)
        row.harm_level, row.response_class, row.note, row.created_at = level, cls, note, utcnow()
        session.add(row)
        session.commit()
    if first:
        record_human_verdict(engine, exchange_id, level, cls, reviewer=reviewer, note=note)
    return row


def sample_counts(engine: Engine) -> dict[str, dict[str, int]]:
    """Per kind: exchanges drawn, labelled at least once, and labelled by two people."""
    with Session(engine) as session:
        samples = session.exec(select(ReviewSample.exchange_id, ReviewSample.kind)).all()
        counts: dict[str, int] = dict(session.exec(  # type: ignore[arg-type]
            select(ReviewLabel.exchange_id, func.count()).group_by(ReviewLabel.exchange_id)).all())
    out: dict[str, dict[str, int]] = {k: {"drawn": 0, "labelled": 0, "double": 0} for k in KINDS}
    for eid, kind in samples:
        row = out.setdefault(kind, {"drawn": 0, "labelled": 0, "double": 0})
        row["drawn"] += 1
        row["labelled"] += counts.get(eid, 0) >= 1
        row["double"] += counts.get(eid, 0) >= 2
    return out
