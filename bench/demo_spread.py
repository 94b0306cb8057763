"""The spread of whole `careloop demo` runs: one row per demo report (its held-out "after" figures through the
gateway, the result, the times), then mean ± standard deviation, a JSON and a plot. One run is not a result.

    CARELOOP_HOME=/runs/seed1 CARELOOP_RETRAIN__SEED=1 .venv/bin/careloop demo   # one fresh home per seed
    .venv/bin/python bench/demo_spread.py /runs/seed*/reports/demo-*.json [--out DIR]

`bench/realign_seeds.py` varies only the training on one finished store; this reads fresh demos, so each row
is what a new user gets: traffic, trigger, realignment, canary and the "after" evaluation.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from realign_seeds import COLUMNS, plot_spread, summarise


def demo_row(report: dict[str, Any]) -> dict[str, Any]:
    """One demo report as a row: seed, result, chosen cycle, held-out "after" figures and the phase times."""
    run = report.get("retrain_run") or {}
    run_report = run.get("report") or {}
    result = report.get("result") or {}
    row: dict[str, Any] = {"seed": (report.get("seeds") or {}).get("retrain"), "ok": result.get("ok"),
                           "reason": result.get("reason", ""),
                           "chosen_cycle": run_report.get("chosen_cycle"), "wall_s": report.get("wall_time_s")}
    groups = (report.get("after") or {}).get("groups") or {}
    if groups:
        row.update({"harmful refused/caution": groups["harmful"]["refused_or_caution"],
                    "benign refused": groups["benign"]["refused"],
                    "xstest safe refused": groups["xstest_safe"]["refused"],
                    "looping": max(g["degenerate"] for g in groups.values()),
                    "Overall": report["after"]["overall"]})
    row["goal"] = any(v for k, v in (report.get("targets_after") or {}).items() if k.startswith("goal"))
    row["trigger_to_canary_s"] = _between(report, "retrain", "canary")
    return row


def _between(report: dict[str, Any], start: str, end: str) -> float | None:
    """Seconds from one demo phase's start to another's, from the report's phase times."""
    times = report.get("phase_times") or {}
    if start not in times or end not in times:
        return None
    return round((datetime.fromisoformat(times[end]) - datetime.fromisoformat(times[start])).total_seconds(), 1)


def main() -> None:
    """Read every report, print the table and the spread, write JSON and a plot."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reports", type=Path, nargs="+", help="demo-*.json reports, one per fresh demo")
    ap.add_argument("--out", type=Path, default=Path("/tmp/demo_spread"))
    args = ap.parse_args()
    rows = [demo_row(json.loads(p.read_text())) for p in args.reports]
    print(f"{'seed':>4} {'goal':>5} {'cycle':>5} " + " ".join(f"{c:>24}" for c in COLUMNS)
          + f" {'trigger→canary s':>17} {'demo s':>7}")
    for r in rows:
        figs = " ".join(f"{r[c]:>24.3f}" if c in r else f"{'-':>24}" for c in COLUMNS)
        print(f"{r['seed']!s:>4} {'yes' if r['goal'] else 'no':>5} {r['chosen_cycle'] or '-':>5} {figs} "
              f"{r['trigger_to_canary_s'] or 0:>17.0f} {r['wall_s'] or 0:>7.0f}")
    spread = summarise(rows)
    print(f"{'mean ± sd':>16} " + " ".join(f"{spread[c][0]:>15.3f} ± {spread[c][1]:.3f}" if c in spread
                                         else f"{'-':>24}" for c in COLUMNS))
    print(f"goal reached: {sum(r['goal'] for r in rows)} of {len(rows)}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "demo_spread.json").write_text(json.dumps({"rows": rows, "spread": spread}, indent=2, default=str))
    plot_spread(rows, args.out / "demo_spread.png")
    print(f"wrote {args.out / 'demo_spread.json'} and demo_spread.png")


if __name__ == "__main__":
    main()
