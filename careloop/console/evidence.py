"""What an approver needs about an adapter: lineage, the run's validation before/after and α sweep, failure
signatures, base vs candidate replies side by side, canary progress; and the registry actions people take."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session

from careloop.core import registry
from careloop.core.schema import Adapter, AdapterEvent, AdapterStatus, RetrainRun

CANARY_ACTIONS = ("canary", "step", "await_approval", "promote", "rollback")


@dataclass
class FigureRow:
    """One model's validation figures in a run (the base before, each cycle after)."""

    label: str
    safety_score: float | None
    err: float | None
    f1: float | None
    overall: float | None
    degenerate: float | None
    note: str = ""


@dataclass
class ReplyPair:
    """The base's and the candidate's replies to one validation prompt."""

    prompt: str
    harm_level: int | None
    base_reply: str
    base_class: str
    new_reply: str
    new_class: str

    @property
    def changed(self) -> bool:
        """Whether the judge's verdict changed between the two."""
        return self.base_class != self.new_class


@dataclass
class Evidence:
    """Everything the adapter page shows about one adapter."""

    adapter: Adapter
    lineage: list[str]  # oldest ancestor first, the adapter last
    events: list[AdapterEvent]
    awaiting_approval: bool
    run: RetrainRun | None = None
    figures: list[FigureRow] = field(default_factory=list)
    alpha_sweep: dict[str, Any] = field(default_factory=dict)
    signatures: list[str] = field(default_factory=list)
    pairs: list[ReplyPair] = field(default_factory=list)
    canary: list[AdapterEvent] = field(default_factory=list)


def awaiting_approval(events: list[AdapterEvent], status: str) -> bool:
    """A canary whose analysis passed and waits for a person (`require_approval`)."""
    latest = next((e for e in events if e.action in CANARY_ACTIONS), None)  # events are newest first
    return status == AdapterStatus.CANARY and latest is not None and latest.action == "await_approval"


def lineage(adapters: dict[str, Adapter], name: str) -> list[str]:
    """The chain of parents up to the first adapter (cycles in bad data are cut)."""
    chain = [name]
    row = adapters.get(name)
    while row is not None and row.parent and row.parent not in chain:
        chain.append(row.parent)
        row = adapters.get(row.parent)
    return list(reversed(chain))


def _row(label: str, v: dict[str, Any], note: str = "") -> FigureRow:
    def num(key: str) -> float | None:
        x = v.get(key)
        return float(x) if isinstance(x, int | float) else None

    return FigureRow(label, num("safety_score"), num("err"), num("f1"), num("overall"), num("degenerate"), note)


def _pairs(base: dict[str, Any], new: dict[str, Any]) -> list[ReplyPair]:
    """Replies to the same validation prompts, those whose verdict changed first."""
    theirs = {s.get("prompt"): s for s in new.get("samples") or [] if isinstance(s, dict)}
    out = []
    for s in base.get("samples") or []:
        if not isinstance(s, dict) or s.get("prompt") not in theirs:
            continue
        t = theirs[s["prompt"]]
        out.append(ReplyPair(str(s["prompt"]), s.get("harm_level"), str(s.get("reply", "")), str(s.get("class", "")),
                             str(t.get("reply", "")), str(t.get("class", ""))))
    out.sort(key=lambda p: not p.changed)
    return out


def _from_report(ev: Evidence, report: dict[str, Any]) -> None:
    baseline = report.get("baseline") or {}
    if baseline:
        ev.figures.append(_row(f"before ({report.get('base_target', 'base')})", baseline))
    chosen = report.get("chosen_cycle")
    chosen_validation: dict[str, Any] = {}
    for c in report.get("cycles") or []:
        note = "chosen" if c.get("cycle") == chosen else ""
        if c.get("rejected"):
            note = f"rejected: {c['rejected']}"
            ev.signatures.append(f"cycle {c.get('cycle')}: rejected ({c['rejected']})")
        if c.get("dpo_skipped"):
            ev.signatures.append(f"cycle {c.get('cycle')}: DPO skipped ({c['dpo_skipped']})")
        ev.figures.append(_row(f"cycle {c.get('cycle')}", c.get("validation") or {}, note))
        if c.get("cycle") == chosen:
            chosen_validation = c.get("validation") or {}
    ev.signatures += [str(s) for s in report.get("failure_signatures") or []]
    if report.get("stop_reason"):
        ev.signatures.append(f"stopped: {report['stop_reason']}")
    ev.alpha_sweep = dict(report.get("selection_by_alpha") or {})
    if baseline and chosen_validation:
        ev.pairs = _pairs(baseline, chosen_validation)


def evidence(engine: Engine, name: str) -> Evidence | None:
    """The adapter page's content for `name` (None if unknown)."""
    adapters = {a.name: a for a in registry.list_adapters(engine)}
    row = adapters.get(name)
    if row is None:
        return None
    events = registry.adapter_events(engine, name, limit=200)
    ev = Evidence(row, lineage(adapters, name), events, awaiting_approval(events, row.status),
                  canary=[e for e in reversed(events) if e.action in CANARY_ACTIONS])
    if row.run_id is not None:
        with Session(engine, expire_on_commit=False) as session:
            ev.run = session.get(RetrainRun, row.run_id)
        if ev.run is not None:
            _from_report(ev, ev.run.report or {})
            if ev.run.error:
                ev.signatures.append(f"run error: {ev.run.error[:300]}")
    return ev


class ActionError(ValueError):
    """A registry action that does not fit the adapter's state (or lacks its confirmation)."""


def approve(engine: Engine, name: str, actor: str, reason: str) -> Adapter:
    """Promote a canary that waits for approval."""
    ev = evidence(engine, name)
    if ev is None or not ev.awaiting_approval:
        raise ActionError(f"{name} is not a canary waiting for approval")
    return registry.promote(engine, name, actor=actor, reason=reason)


def reject(engine: Engine, name: str, actor: str, reason: str) -> str | None:
    """Roll back a canary that waits for approval (or any live canary)."""
    row = registry.get_adapter(engine, name)
    if row is None or row.status != AdapterStatus.CANARY:
        raise ActionError(f"{name} is not the live canary")
    return registry.rollback(engine, actor=actor, reason=reason)
