"""The demo's before/after table (terminal) and plot (PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from careloop.core.settings import Settings

GROUP_ROWS = (
    ("harmful", "refused_or_caution", "harmful requests refused or cautioned", "higher"),
    ("benign", "refused", "benign medical questions refused", "lower"),
    ("xstest_safe", "refused", "XSTest safe prompts refused", "lower"),
)


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def table_rows(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(measure, before, after) rows of the before/after comparison."""
    before, after = report["before"], report["after"]
    rows: list[tuple[str, str, str]] = []
    for key, label in (("safety_score", "Safety Score"), ("err", "ERR"), ("f1", "F1 (harmful detection)"),
                       ("overall", "Overall Metric (α=0.6)")):
        rows.append((label, f"{before[key]:.3f}", f"{after[key]:.3f}"))
    for group, field, label, _ in GROUP_ROWS:
        b = before["groups"].get(group, {}).get(field)
        a = after["groups"].get(group, {}).get(field)
        n = after["groups"].get(group, {}).get("n", 0)
        rows.append((f"{label} (n={n})", _pct(b), _pct(a)))
    deg_b = max((g["degenerate"] for g in before["groups"].values()), default=0.0)
    deg_a = max((g["degenerate"] for g in after["groups"].values()), default=0.0)
    rows.append(("looping/degenerate replies (worst group)", _pct(deg_b), _pct(deg_a)))
    return rows


def print_table(report: dict[str, Any], console: Console) -> None:
    """Print the before/after table and which targets were reached."""
    table = Table(title="careloop demo: held-out prompts, before vs after (served through the gateway)")
    table.add_column("measure")
    table.add_column("before (base)", justify="right")
    table.add_column(f"after ({report.get('stable_adapter') or 'base'})", justify="right")
    for row in table_rows(report):
        table.add_row(*row)
    console.print(table)
    decision = report.get("decision") or {}
    console.print(f"decision: {decision.get('action', 'none')} {decision.get('adapter', '')} "
                  f"· wall time {report['wall_time_s'] / 60:.1f} min · failed requests {report['failed_requests']}")
    for name, ok in report["targets_after"].items():
        console.print(f"  {'[green]reached[/]' if ok else '[red]not reached[/]'}: {name}")
    run_report = (report.get("retrain_run") or {}).get("report") or {}
    for c in run_report.get("cycles", []):
        dpo = c.get("dpo")
        dpo_txt = (f"DPO {dpo['steps']} steps, {'kept' if dpo.get('kept') else 'not kept'}" if dpo
                   else f"DPO skipped ({c.get('dpo_skipped')})")
        sig = c.get("signatures") or {}
        console.print(f"  cycle {c['cycle']}: KTO {c['kto'].get('steps')} steps · {dpo_txt} · validation Overall "
                      f"{c['validation']['overall']:.3f} · {c['seconds']:.0f} s · signatures: ERR spike "
                      f"{'yes' if sig.get('err_spike') else 'no'}, DPO collapse "
                      f"{'yes' if sig.get('dpo_collapse') else 'no'}, flat {sig.get('flat_cycles', 0)}"
                      + (f" · rejected: {c['rejected']}" if c.get("rejected") else ""))
    result = report.get("result")
    if result:
        console.print(f"result: {'[green]ok[/]' if result['ok'] else '[red]FAILED[/]'} · {result['reason']}")


def rolling_series(rows: list[tuple[float, float, int, str]], window: int,
                   min_harmless: int) -> tuple[list[float], list[float], list[float]]:
    """Times, rolling Safety Score and rolling ERR of (minutes, score, harm level, class) verdict rows; ERR is NaN
    where the window holds fewer than `min_harmless` harmless prompts, as the ERR rules require."""
    xs, ss, err = [], [], []
    for i in range(len(rows)):
        chunk = rows[max(0, i - window + 1): i + 1]
        harmless = [r for r in chunk if r[2] == 0]
        xs.append(rows[i][0])
        ss.append(sum(r[1] for r in chunk) / len(chunk))
        enough = len(harmless) >= max(1, min_harmless)
        err.append(sum(r[3] == "Refuse" for r in harmless) / len(harmless) if enough else float("nan"))
    return xs, ss, err


def plot_demo(settings: Settings, report: dict[str, Any], path: Path) -> None:
    """Safety Score and ERR over the run per adapter, phase marks, and before/after bars, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sqlmodel import Session, select

    from careloop.core.schema import Verdict
    from careloop.core.store import make_engine

    engine = make_engine(settings.database_url or "")
    with Session(engine) as s:
        verdicts = s.exec(select(Verdict).where(Verdict.judge == settings.monitor.reference_judge)
                          .order_by(Verdict.id)).all()  # type: ignore[arg-type]
    engine.dispose()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 5), gridspec_kw={"width_ratios": [3, 2]})
    t0 = verdicts[0].created_at if verdicts else None
    by: dict[str, list[tuple[float, float, int, str]]] = {}
    for v in verdicts:
        x = (v.created_at - t0).total_seconds() / 60 if t0 else 0.0
        by.setdefault(v.adapter, []).append((x, v.score, v.harm_level, v.response_class))
    window = 40
    for adapter, rows in by.items():
        xs, ss, err = rolling_series(rows, window, settings.monitor.err_min_harmless)
        ax1.plot(xs, ss, label=f"Safety Score · {adapter}")
        ax1.plot(xs, err, linestyle="--", label=f"ERR · {adapter}")
    if t0 is not None:
        for name, iso in report.get("phase_times", {}).items():
            from datetime import datetime

            at = (datetime.fromisoformat(iso) - t0).total_seconds() / 60
            if at >= 0:
                ax1.axvline(at, color="grey", linewidth=0.8, alpha=0.6)
                ax1.text(at, 1.02, name, rotation=90, fontsize=7, va="bottom")
    ax1.set_xlabel("minutes since the first verdict")
    ax1.set_ylim(-0.02, 1.05)
    ax1.set_title(f"rolling {window}-verdict window, reference judge '{settings.monitor.reference_judge}'")
    ax1.legend(fontsize=7, loc="lower right")
    labels, before, after = [], [], []
    for group, field, label, _ in GROUP_ROWS:
        labels.append(label.replace(" ", "\n", 2))
        before.append(report["before"]["groups"].get(group, {}).get(field, 0.0) * 100)
        after.append(report["after"]["groups"].get(group, {}).get(field, 0.0) * 100)
    xs2 = range(len(labels))
    ax2.bar([x - 0.2 for x in xs2], before, width=0.4, label="before (base)")
    ax2.bar([x + 0.2 for x in xs2], after, width=0.4, label=f"after ({report.get('stable_adapter') or 'base'})")
    ax2.set_xticks(list(xs2), labels, fontsize=8)
    ax2.set_ylabel("% of held-out prompts")
    ax2.set_title("held-out prompts through the gateway")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
