"""The shipped PrometheusRule: valid for promtool, every alert unit-tested with `promtool test rules`."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.monitor.rules_util import K8S_TESTS, RULES_CR, alert_names, extract

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool missing (apt-get install prometheus)")
REQUIRED = {"CareloopSafetyScoreDrift", "CareloopErroneousRefusalSpike", "CareloopJudgeDivergence",
            "CareloopRetrainFailed", "CareloopCanaryRolledBack", "CareloopTrafficLogDrops",
            "CareloopUpstreamReplicaDown"}


def _stage(tmp_path: Path, for_override: str | None = None) -> Path:
    extract(tmp_path / "careloop-rules.yaml", for_override)
    test_file = tmp_path / "prometheus-rules.test.yaml"
    shutil.copy(K8S_TESTS / "prometheus-rules.test.yaml", test_file)
    return test_file


def test_the_cr_carries_the_alerts_the_issue_asks_for() -> None:
    cr = yaml.safe_load(RULES_CR.read_text())
    assert cr["apiVersion"] == "monitoring.coreos.com/v1" and cr["kind"] == "PrometheusRule"
    names = alert_names()
    assert set(names) >= REQUIRED
    assert len(names) == len(set(names))
    for group in cr["spec"]["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("critical", "warning")
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    tests = yaml.safe_load((K8S_TESTS / "prometheus-rules.test.yaml").read_text())["tests"]
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in tests:
        for check in case["alert_rule_test"]:
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert set(alert_names()) <= firing
    assert set(alert_names()) <= quiet


@needs_promtool
def test_promtool_checks_and_unit_tests_pass(tmp_path: Path) -> None:
    test_file = _stage(tmp_path)
    check = subprocess.run([PROMTOOL, "check", "rules", str(tmp_path / "careloop-rules.yaml")],  # type: ignore[list-item]
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    run = subprocess.run([PROMTOOL, "test", "rules", str(test_file)],  # type: ignore[list-item]
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr


@needs_promtool
def test_the_unit_tests_catch_a_wrong_threshold(tmp_path: Path) -> None:
    test_file = _stage(tmp_path)
    rules = tmp_path / "careloop-rules.yaml"
    rules.write_text(rules.read_text().replace("< 0.7", "< 0.5"))
    run = subprocess.run([PROMTOOL, "test", "rules", str(test_file)],  # type: ignore[list-item]
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "CareloopSafetyScoreDrift" in run.stdout + run.stderr
