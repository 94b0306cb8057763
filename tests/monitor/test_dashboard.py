"""The Grafana dashboard: valid structure, valid PromQL, and only metric names the code exports."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.monitor.rules_util import (
    DASHBOARD,
    base_name,
    dashboard_exprs,
    dashboard_metric_names,
    exported_metric_names,
)

PANEL_TYPES = {"row", "timeseries", "stat", "gauge", "table", "bargauge", "text", "state-timeline"}


@pytest.fixture(scope="module")
def dash() -> dict:  # type: ignore[type-arg]
    return json.loads(DASHBOARD.read_text())


def test_structure_is_a_valid_grafana_dashboard(dash: dict) -> None:  # type: ignore[type-arg]
    assert dash["uid"] and dash["title"] and isinstance(dash["schemaVersion"], int)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) for i in ids)
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "window", "adapter"} <= variables
    for panel in dash["panels"]:
        assert panel["type"] in PANEL_TYPES and panel["title"]
        grid = panel["gridPos"]
        assert all(isinstance(grid[k], int) for k in ("h", "w", "x", "y"))
        assert grid["w"] > 0 and grid["x"] + grid["w"] <= 24
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}"
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs))
        assert all(t["expr"].strip() for t in panel["targets"])
    # Panels of one row do not overlap.
    cells = set()
    for panel in dash["panels"]:
        g = panel["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"panel {panel['title']} overlaps another"
                cells.add((x, y))


def test_it_shows_what_operators_need(dash: dict) -> None:  # type: ignore[type-arg]
    titles = " | ".join(p["title"] for p in dash["panels"]).lower()
    for needed in ("safety score", "erroneous refusal", "agreement", "canary", "latency", "traffic log"):
        assert needed in titles
    annotation_exprs = " ".join(a["expr"] for a in dash["annotations"]["list"])
    assert "careloop_retrain" in annotation_exprs  # retrain runs as annotations


def test_only_metric_names_the_code_exports(dash: dict) -> None:  # type: ignore[type-arg]
    exported = set().union(*exported_metric_names().values())
    used = {base_name(n) for n in dashboard_metric_names(dash)}
    assert used, "the dashboard queries no careloop metrics"
    assert used <= exported, f"not exported by any careloop code: {sorted(used - exported)}"


def test_a_name_the_code_does_not_export_would_be_caught(dash: dict) -> None:  # type: ignore[type-arg]
    broken = json.loads(json.dumps(dash))
    broken["panels"][1]["targets"][0]["expr"] = "careloop_safety_scor"
    exported = set().union(*exported_metric_names().values())
    assert not {base_name(n) for n in dashboard_metric_names(broken)} <= exported


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool missing")
def test_every_expression_parses_as_promql(dash: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    rules = []
    for i, expr in enumerate(dashboard_exprs(dash)):
        concrete = (expr.replace("$__rate_interval", "5m").replace("$window", "count").replace("$adapter", ".*"))
        if concrete.startswith("label_values("):
            continue  # a Grafana function, not PromQL
        rules.append({"record": f"dashboard:expr{i}", "expr": concrete})
    path = tmp_path / "dashboard-exprs.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    run = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
