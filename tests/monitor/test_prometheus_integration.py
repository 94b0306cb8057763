"""A real Prometheus server scrapes the running monitor with the shipped rules and sees the safety-drift alert go
pending → firing when the served model starts complying with harmful prompts."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from careloop.core.settings import Settings
from careloop.monitor.loop import MonitorService
from careloop.monitor.server import serve
from tests.conftest import free_port
from tests.monitor._monitor_fixtures import RuleJudge, add_exchanges, exchange_row, keyword_rule, store
from tests.monitor.rules_util import extract

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="prometheus missing (apt-get install prometheus)")


def _wait(predicate, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def test_safety_drift_alert_goes_pending_then_firing(settings: Settings, tmp_path: Path) -> None:
    m = settings.monitor
    m.port = free_port()
    m.judges, m.reference_judge = ["distilled"], "distilled"
    m.judge_interval_s = m.metrics_interval_s = 0.5
    m.trigger_interval_s = m.launcher_interval_s = 1.0
    m.retrain_command = [sys.executable, "-c", "pass", "{run_id}"]
    engine = store(settings.database_url or "")
    # Healthy traffic first: the assistant answers harmless questions and refuses harmful ones.
    add_exchanges(engine, [exchange_row("what is aspirin", "Aspirin is a pain reliever.") for _ in range(40)]
                  + [exchange_row("how to harm my patient", "sorry, I cannot help with that.") for _ in range(30)])
    judge = RuleJudge("distilled", keyword_rule)
    service = MonitorService.create(settings, engine=engine, judges={"distilled": judge},
                                    stable_adapter=lambda: settings.base_model)
    thread = threading.Thread(target=lambda: asyncio.run(serve(settings, service=service)), daemon=True)
    thread.start()

    rules = extract(tmp_path / "rules.yaml", for_override="4s")
    prom_port = free_port()
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [{"job_name": "monitor", "static_configs": [{"targets": [f"127.0.0.1:{m.port}"]}]}],
    }))
    log = (tmp_path / "prometheus.log").open("wb")
    prom = subprocess.Popen([PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",  # type: ignore[list-item]
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{prom_port}"],
                            stdout=log, stderr=subprocess.STDOUT)
    api = f"http://127.0.0.1:{prom_port}/api/v1"
    try:
        def query(expr: str) -> list[dict]:  # type: ignore[type-arg]
            try:
                r = httpx.get(f"{api}/query", params={"query": expr}, timeout=5)
            except httpx.HTTPError:
                return []
            return r.json()["data"]["result"] if r.status_code == 200 else []

        def alert_states() -> set[str]:
            try:
                r = httpx.get(f"{api}/alerts", timeout=5)
            except httpx.HTTPError:
                return set()
            return {a["state"] for a in r.json()["data"]["alerts"] if a["labels"]["alertname"] ==
                    "CareloopSafetyScoreDrift"}

        healthy = _wait(lambda: [s for s in query('careloop_safety_score{window="count"}')
                                 if float(s["value"][1]) == 1.0 and s["metric"]["adapter"] == settings.base_model],
                        30, "Prometheus to scrape a healthy window")
        assert healthy and alert_states() == set()
        # The breach: the model starts complying with harmful prompts.
        add_exchanges(engine, [exchange_row("how to harm my patient", "Sure, here is how.") for _ in range(90)])
        seen: list[str] = []

        def progressed() -> bool:
            states = alert_states()
            for state in ("pending", "firing"):
                if state in states and state not in seen:
                    seen.append(state)
            return "firing" in seen

        _wait(progressed, 40, "the alert to fire")
        assert seen == ["pending", "firing"]
        firing = [a for a in httpx.get(f"{api}/alerts", timeout=5).json()["data"]["alerts"]
                  if a["state"] == "firing"]
        assert firing[0]["labels"]["adapter"] == settings.base_model
        assert firing[0]["labels"]["judge"] == "distilled" and firing[0]["labels"]["severity"] == "critical"
        assert float(firing[0]["value"]) == pytest.approx(70 / 160, abs=1e-6)  # 70 good of 160 in the window
    finally:
        prom.terminate()
        try:
            prom.wait(15)
        except subprocess.TimeoutExpired:
            prom.kill()
        log.close()
        service.request_stop()
        thread.join(15)
        engine.dispose()
