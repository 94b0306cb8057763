"""The loop's history in order (triggers, retrain runs, canary steps and decisions) and a server-made SVG plot
of Safety Score and ERR per adapter over time."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from html import escape

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from careloop.core.schema import AdapterEvent, RetrainRun, TriggerEvent, Verdict, utcnow
from careloop.monitor.scoring import compute_metrics

PALETTE = ("#1f6feb", "#d1242f", "#1a7f37", "#9a6700", "#8250df", "#bf3989")


@dataclass(frozen=True)
class TimelineEvent:
    """One thing that happened in the loop."""

    at: datetime
    kind: str  # trigger | run | adapter
    title: str
    detail: str
    adapter: str | None = None


def _aware(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=utcnow().tzinfo)


def timeline(engine: Engine, limit: int = 200) -> list[TimelineEvent]:
    """Triggers, retrain runs (requested, started, finished) and registry decisions, newest first."""
    out: list[TimelineEvent] = []
    with Session(engine) as session:
        for t in session.exec(select(TriggerEvent).order_by(col(TriggerEvent.id).desc()).limit(limit)).all():
            run = f" → retrain run {t.retrain_run_id}" if t.retrain_run_id else ""
            out.append(TimelineEvent(_aware(t.created_at), "trigger", f"{t.kind}: {t.rule}{run}", t.decision,
                                     t.adapter))
        for r in session.exec(select(RetrainRun).order_by(col(RetrainRun.id).desc()).limit(limit)).all():
            out.append(TimelineEvent(_aware(r.created_at), "run", f"retrain run {r.id} requested ({r.backend})",
                                     f"from {r.base_adapter or 'the base model'}", r.base_adapter))
            if r.started_at:
                out.append(TimelineEvent(_aware(r.started_at), "run", f"retrain run {r.id} started", "",
                                         r.base_adapter))
            if r.finished_at:
                outcome = r.outcome or r.status
                out.append(TimelineEvent(_aware(r.finished_at), "run", f"retrain run {r.id} {r.status}: {outcome}",
                                         (r.error or "")[:300] + (f" → {r.adapter_name}" if r.adapter_name else ""),
                                         r.adapter_name))
        for e in session.exec(select(AdapterEvent).order_by(col(AdapterEvent.id).desc()).limit(limit)).all():
            fraction = e.figures.get("fraction") if isinstance(e.figures, dict) else None
            share = f" at {float(fraction):.0%}" if isinstance(fraction, int | float) else ""
            out.append(TimelineEvent(_aware(e.created_at), "adapter", f"{e.action} {e.adapter}{share} ({e.actor})",
                                     e.reason, e.adapter))
    out.sort(key=lambda ev: ev.at, reverse=True)
    return out[:limit]


@dataclass(frozen=True)
class SeriesPoint:
    """The Safety Score and ERR of one adapter's verdicts in one time bucket."""

    start: datetime
    n: int
    safety_score: float
    err: float | None


def metric_series(engine: Engine, judge: str, hours: float = 72.0, buckets: int = 24,
                  alpha: float = 0.6) -> dict[str, list[SeriesPoint]]:
    """Per adapter: SS and ERR of `judge`'s verdicts in equal time buckets over the last `hours`."""
    end = utcnow()
    start = end - timedelta(hours=hours)
    width = (end - start) / buckets
    with Session(engine) as session:
        rows = session.exec(select(Verdict.adapter, Verdict.created_at, Verdict.harm_level, Verdict.response_class)
                            .where(Verdict.judge == judge, col(Verdict.created_at) >= start)).all()
    grouped: dict[str, dict[int, list[tuple[int, str]]]] = defaultdict(lambda: defaultdict(list))
    for adapter, at, harm, cls in rows:
        i = min(buckets - 1, int((_aware(at) - start) / width))
        grouped[adapter][i].append((int(harm), str(cls)))
    out: dict[str, list[SeriesPoint]] = {}
    for adapter, by_bucket in sorted(grouped.items()):
        points = []
        for i, graded in sorted(by_bucket.items()):
            m = compute_metrics(graded, alpha)
            points.append(SeriesPoint(start + i * width, m.n, m.safety_score, m.err if m.harmless else None))
        out[adapter] = points
    return out


def svg_plot(series: dict[str, list[SeriesPoint]], width: int = 760, height: int = 260) -> str:
    """An inline SVG: Safety Score (solid) and ERR (dashed) per adapter over time, 0-1 on the y axis."""
    pad_l, pad_r, pad_t, pad_b = 40, 170, 12, 28
    all_points = [p for pts in series.values() for p in pts]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" role="img" viewBox="0 0 {width} {height}" '
             f'width="{width}" height="{height}" aria-label="Safety Score and ERR per adapter over time">']
    x0, x1, y0, y1 = pad_l, width - pad_r, height - pad_b, pad_t
    for v in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = y0 - v * (y0 - y1)
        parts.append(f'<line x1="{x0}" x2="{x1}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>'
                     f'<text x="{x0 - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">{v:.2f}</text>')
    if not all_points:
        parts.append(f'<text x="{(x0 + x1) / 2:.0f}" y="{height / 2:.0f}" text-anchor="middle" font-size="13">'
                     "no verdicts in this period</text></svg>")
        return "".join(parts)
    t_min = min(p.start for p in all_points).timestamp()
    t_max = max(p.start for p in all_points).timestamp()
    span = max(t_max - t_min, 1.0)

    def xy(p: SeriesPoint, v: float) -> str:
        return f"{x0 + (p.start.timestamp() - t_min) / span * (x1 - x0):.1f},{y0 - v * (y0 - y1):.1f}"

    for n, (adapter, pts) in enumerate(series.items()):
        color = PALETTE[n % len(PALETTE)]
        ss = " ".join(xy(p, p.safety_score) for p in pts)
        err = " ".join(xy(p, p.err) for p in pts if p.err is not None)
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{ss}"/>')
        if err:
            parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" stroke-dasharray="5 3" '
                         f'points="{err}"/>')
        for p in pts:
            cx, cy = xy(p, p.safety_score).split(",")
            parts.append(f'<circle cx="{cx}" cy="{cy}" r="2.5" fill="{color}"><title>{escape(adapter)} '
                         f'{p.start:%Y-%m-%d %H:%M}: SS {p.safety_score:.3f}, ERR '
                         f'{"-" if p.err is None else f"{p.err:.3f}"} (n={p.n})</title></circle>')
        ly = pad_t + 14 + 18 * n
        parts.append(f'<line x1="{x1 + 10}" x2="{x1 + 30}" y1="{ly - 4}" y2="{ly - 4}" stroke="{color}" '
                     f'stroke-width="2"/><text x="{x1 + 36}" y="{ly}" font-size="11">{escape(adapter[:22])}</text>')
    ly = pad_t + 14 + 18 * len(series)
    parts.append(f'<text x="{x1 + 10}" y="{ly + 4}" font-size="11">solid: Safety Score</text>'
                 f'<text x="{x1 + 10}" y="{ly + 20}" font-size="11">dashed: ERR</text>')
    first, last = datetime.fromtimestamp(t_min, tz=utcnow().tzinfo), datetime.fromtimestamp(t_max, tz=utcnow().tzinfo)
    parts.append(f'<text x="{x0}" y="{height - 8}" font-size="11">{first:%Y-%m-%d %H:%M}</text>'
                 f'<text x="{x1}" y="{height - 8}" font-size="11" text-anchor="end">{last:%Y-%m-%d %H:%M} UTC</text>')
    parts.append("</svg>")
    return "".join(parts)
