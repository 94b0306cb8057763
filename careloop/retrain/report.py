"""A run's before/after table and plot, and the datasets `careloop eval` knows by name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from careloop.core.settings import Settings
from careloop.retrain.datasets import PromptItem, xstest_items

BUILTIN = ("validation", "heldout", "xstest-safe", "xstest")


def load_eval_items(name: str, settings: Settings) -> list[PromptItem]:
    """Prompts with harm levels: a builtin set or a JSONL file of {prompt, harm_level}."""
    if name == "validation":
        from careloop.retrain.run_data import prepare_data

        return prepare_data(settings, []).validation  # exactly the split a run validates on
    if name == "xstest-safe":
        return xstest_items(settings.data_dir, "safe")
    if name == "xstest":
        return [*xstest_items(settings.data_dir, "safe"), *xstest_items(settings.data_dir, "unsafe")]
    if name == "heldout":
        from careloop.retrain.heldout import heldout_prompts

        return [PromptItem(p.prompt, p.harm_level if p.harm_level is not None else 3, p.group)
                for p in heldout_prompts(settings.data_dir)]
    path = Path(name)
    if not path.exists():
        raise FileNotFoundError(f"{name!r} is neither a file nor one of {', '.join(BUILTIN)}")
    items = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{n}: not JSON") from exc
        level = row.get("harm_level", row.get("harmful_level"))
        if not isinstance(row.get("prompt"), str) or not isinstance(level, int) or not 0 <= level <= 3:
            raise ValueError(f"{path}:{n}: needs 'prompt' (text) and 'harm_level' (0-3)")
        items.append(PromptItem(row["prompt"], level, row.get("source", path.stem)))
    return items


def _row(label: str, v: dict[str, Any]) -> list[str]:
    lv = v.get("per_level", {})
    harm = [x for k, x in lv.items() if k != "0"]
    harmful_ok = sum(x.get("refused", 0) + x.get("caution", 0) for x in harm) / len(harm) if harm else 0.0
    return [label, f"{v['safety_score']:.3f}", f"{v['err']:.3f}", f"{v['f1']:.3f}", f"{v['overall']:.3f}",
            f"{harmful_ok:.0%}", f"{lv.get('0', {}).get('refused', 0):.0%}", f"{v.get('degenerate', 0):.0%}"]


def print_run_table(report: dict[str, Any], console: Console) -> None:
    """Before/after figures per cycle on the validation set, and the checkpoint chosen under each α."""
    table = Table(title=f"retrain run {report['run_id']}: validation (never trained on)")
    for col in ("model", "SS", "ERR", "F1", "Overall", "harmful refused/caution", "benign refused", "looping"):
        table.add_column(col)
    if report.get("baseline"):
        table.add_row(*_row(f"before ({report['base_target']})", report["baseline"]))
    for c in report.get("cycles", []):
        label = f"cycle {c['cycle']}" + (" (rejected)" if c.get("rejected") else "")
        if c["cycle"] == report.get("chosen_cycle"):
            label += " ← chosen"
        table.add_row(*_row(label, c["validation"]))
    console.print(table)
    sel = report.get("selection_by_alpha") or {}
    if sel:
        console.print("checkpoint by α: " + ", ".join(f"α={a}: cycle {c}" for a, c in sel.items()))


def write_run_plot(report: dict[str, Any], path: Path) -> Path | None:
    """A PNG of SS, ERR, F1 and Overall from the baseline through each cycle (None without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    points = [("base", report.get("baseline") or {})]
    points += [(f"c{c['cycle']}", c["validation"]) for c in report.get("cycles", [])]
    points = [(k, v) for k, v in points if v]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    xs = list(range(len(points)))
    for key, label in (("safety_score", "Safety Score"), ("err", "ERR"), ("f1", "F1"), ("overall", "Overall")):
        ax.plot(xs, [v[key] for _, v in points], marker="o", label=label)
    ax.set_xticks(xs, [k for k, _ in points])
    ax.set_ylim(0, 1)
    ax.set_title(f"retrain run {report['run_id']} (validation)")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
