"""Where the shipped rules and dashboard live, and the metric names their expressions use."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import yaml

from careloop.core.settings import REPO_ROOT

K8S_BASE = REPO_ROOT / "k8s" / "base"
K8S_TESTS = REPO_ROOT / "k8s" / "tests"
RULES_CR = K8S_BASE / "prometheus-rules.yaml"
DASHBOARD = K8S_BASE / "grafana-dashboard.json"

_NAME = re.compile(r"\b(careloop_[a-z0-9_]+)\b")


def _extract_module() -> Any:
    spec = importlib.util.spec_from_file_location("careloop_extract_rules", K8S_TESTS / "extract_rules.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def extract(out: Path, for_override: str | None = None) -> Path:
    """Write the plain rule file from the CR (k8s/tests/extract_rules.py)."""
    return _extract_module().write_rules(out, RULES_CR, for_override)  # type: ignore[no-any-return]


def alert_names() -> list[str]:
    """Every alert of the CR."""
    cr = yaml.safe_load(RULES_CR.read_text())
    return [r["alert"] for g in cr["spec"]["groups"] for r in g["rules"] if "alert" in r]


def rule_metric_names() -> set[str]:
    """careloop_* names in the rules' expressions."""
    cr = yaml.safe_load(RULES_CR.read_text())
    return {n for g in cr["spec"]["groups"] for r in g["rules"] for n in _NAME.findall(r["expr"])}


def dashboard_exprs(dashboard: dict[str, Any] | None = None) -> list[str]:
    """Every PromQL expression of the dashboard (panel targets, template variables, annotations)."""
    dash = dashboard or json.loads(DASHBOARD.read_text())
    exprs: list[str] = []
    for panel in dash.get("panels", []):
        for inner in [panel, *panel.get("panels", [])]:
            exprs += [t["expr"] for t in inner.get("targets", []) if "expr" in t]
    for var in dash.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        q = var.get("query")
        if isinstance(q, dict):
            q = q.get("query")
        if isinstance(q, str):
            exprs.append(q)
    exprs += [a["expr"] for a in dash.get("annotations", {}).get("list", []) if a.get("expr")]
    return exprs


def dashboard_metric_names(dashboard: dict[str, Any] | None = None) -> set[str]:
    """careloop_* names the dashboard queries."""
    return {n for e in dashboard_exprs(dashboard) for n in _NAME.findall(e)}


def base_name(sample_name: str) -> str:
    """A sample's family name: histogram/counter suffixes stripped."""
    for suffix in ("_bucket", "_sum", "_count", "_created", "_total"):
        if sample_name.endswith(suffix):
            return sample_name[: -len(suffix)]
    return sample_name


def exported_metric_names() -> dict[str, set[str]]:
    """careloop_* family names the code exports: {'monitor': …, 'gateway': …, 'judges': …}."""
    from prometheus_client import REGISTRY

    import careloop.monitor.judges.llm  # noqa: F401  (registers careloop_judge_errors_total)
    from careloop.gateway.metrics import GatewayMetrics
    from careloop.monitor.metrics import MonitorMetrics

    def families(registry: Any) -> set[str]:
        return {base_name(f.name) for f in registry.collect() if f.name.startswith("careloop_")}

    return {"monitor": families(MonitorMetrics().registry), "gateway": families(GatewayMetrics().registry),
            "judges": families(REGISTRY)}
