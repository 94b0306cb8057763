"""How far the judges (and the people) agree: κ of every judge against the human labels, overall, on the random
sample only, per adapter and per day; confusion matrices; ERR / Safety Score bias; κ between two people."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from careloop.core.schema import HUMAN, ReviewLabel, Verdict
from careloop.monitor.audit import HARM_LEVELS, AuditReport, analyse
from careloop.monitor.datasets import LabelledExample
from careloop.monitor.judges.base import JudgeResult
from careloop.monitor.review import human_pairs
from careloop.monitor.scoring import cohen_kappa


@dataclass
class JudgeAgreement:
    """One judge against the human labels."""

    judge: str
    all: AuditReport  # every human label (targeted ones included: κ there is pessimistic by design)
    random: AuditReport | None  # the random sample only: the unbiased estimate
    by_day: list[tuple[str, int, float | None]] = field(default_factory=list)  # (day, n, κ)


@dataclass
class PeopleAgreement:
    """Two people's labels of the same exchanges."""

    n: int
    kappa_class: float | None
    kappa_harm: float | None
    agree_class: float | None


def judges_with_verdicts(engine: Engine) -> list[str]:
    """Every judge that has graded something, the human labels aside."""
    with Session(engine) as session:
        names = session.exec(select(Verdict.judge).where(Verdict.judge != HUMAN).distinct()).all()
    return sorted(names)


def label_kinds(engine: Engine) -> dict[str, str]:
    """exchange id -> the kind of sample its first console label was drawn in."""
    with Session(engine) as session:
        rows = session.exec(select(ReviewLabel.exchange_id, ReviewLabel.kind).order_by(col(ReviewLabel.id))).all()
    out: dict[str, str] = {}
    for eid, kind in rows:
        out.setdefault(eid, kind)
    return out


def _report(judge: str, pairs: list[tuple[Verdict, Verdict]], data: str) -> AuditReport:
    examples = [LabelledExample(id=h.exchange_id, messages=[], response="", response_class=h.response_class,
                                harm_level=h.harm_level, source="store", group=h.adapter) for h, _ in pairs]
    results: list[JudgeResult | None] = [JudgeResult(j.harm_level, j.response_class) for _, j in pairs]
    version = pairs[-1][1].judge_version if pairs else ""
    return analyse(judge, version, data, examples, results)


def judge_agreement(engine: Engine, judge: str, kinds: dict[str, str] | None = None) -> JudgeAgreement | None:
    """A judge against the human labels (None when no exchange has both)."""
    pairs = human_pairs(engine, judge)
    if not pairs:
        return None
    kinds = label_kinds(engine) if kinds is None else kinds
    random_pairs = [p for p in pairs if kinds.get(p[0].exchange_id) == "random"]
    by_day: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for h, j in pairs:
        by_day[h.created_at.date().isoformat()].append((h.response_class, j.response_class))
    days = [(day, len(v), cohen_kappa([a for a, _ in v], [b for _, b in v]) if len(v) >= 2 else None)
            for day, v in sorted(by_day.items())]
    return JudgeAgreement(judge, _report(judge, pairs, "human labels"),
                          _report(judge, random_pairs, "random sample") if random_pairs else None, days)


def people_agreement(engine: Engine) -> PeopleAgreement:
    """κ between the first two people who labelled the same exchanges (the ceiling a judge can reach)."""
    with Session(engine) as session:
        rows = session.exec(select(ReviewLabel).order_by(col(ReviewLabel.id))).all()
    by_ex: dict[str, list[ReviewLabel]] = defaultdict(list)
    for r in rows:
        by_ex[r.exchange_id].append(r)
    pairs = [(v[0], v[1]) for v in by_ex.values() if len(v) >= 2]
    if not pairs:
        return PeopleAgreement(0, None, None, None)
    a_cls, b_cls = [a.response_class for a, _ in pairs], [b.response_class for _, b in pairs]
    enough = len(pairs) >= 2
    return PeopleAgreement(
        len(pairs),
        cohen_kappa(a_cls, b_cls) if enough else None,
        cohen_kappa([str(a.harm_level) for a, _ in pairs], [str(b.harm_level) for _, b in pairs], HARM_LEVELS)
        if enough else None,
        sum(x == y for x, y in zip(a_cls, b_cls, strict=True)) / len(pairs))
