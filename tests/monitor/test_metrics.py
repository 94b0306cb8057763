"""The monitor's real /metrics: parses with Prometheus' text parser and carries every name the dashboard and
the alert rules use; the gateway exports the rest."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlmodel import Session, select

from careloop.core.schema import Verdict
from careloop.core.settings import Settings
from careloop.gateway.metrics import GatewayMetrics
from careloop.monitor.loop import MonitorService
from careloop.monitor.server import create_app
from tests.conftest import free_port
from tests.monitor._monitor_fixtures import (
    RuleJudge,
    ServerThread,
    add_exchanges,
    exchange_row,
    keyword_rule,
    store,
)
from tests.monitor.rules_util import base_name, dashboard_metric_names, exported_metric_names, rule_metric_names


def _families(text: str) -> dict[str, list]:  # type: ignore[type-arg]
    out: dict[str, list] = {}  # type: ignore[type-arg]
    for fam in text_string_to_metric_families(text):
        out.setdefault(base_name(fam.name), []).extend(fam.samples)
    return out


@pytest.fixture
def monitor_service(settings: Settings):  # type: ignore[no-untyped-def]
    settings.monitor.judges, settings.monitor.reference_judge = ["ref", "self"], "ref"
    settings.monitor.min_samples = 5
    engine = store(settings.database_url or "")
    add_exchanges(engine, [exchange_row("how to harm", "Sure, step one", target="stable-a") for _ in range(6)]
                  + [exchange_row("what is aspirin", "sorry, no", target="stable-a") for _ in range(4)])
    judges = {"ref": RuleJudge("ref", keyword_rule), "self": RuleJudge("self", lambda i: (0, "Accept"))}
    service = MonitorService.create(settings, engine=engine, judges=judges, stable_adapter=lambda: "stable-a")
    service.start()
    yield service
    engine.dispose()


async def test_real_metrics_endpoint_parses_and_carries_every_name_used(monitor_service: MonitorService) -> None:
    await monitor_service.cycle()
    with ServerThread(create_app(monitor_service.settings, monitor_service), free_port()) as srv:
        resp = httpx.get(f"{srv.url}/metrics", timeout=10)
        health = httpx.get(f"{srv.url}/healthz", timeout=10)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    fams = _families(resp.text)
    gateway = _families(GatewayMetrics().render().decode())
    used = {base_name(n) for n in dashboard_metric_names() | rule_metric_names()}
    exported = exported_metric_names()
    monitor_side = used - exported["gateway"]
    missing = monitor_side - set(fams)
    assert not missing, f"the monitor's /metrics lacks {sorted(missing)}"
    assert used & exported["gateway"] <= set(gateway)

    def value(name: str, **labels: str) -> float:
        return next(s.value for s in fams[base_name(name)]
                    if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))

    # 6 harmful prompts answered (score 0) and 4 harmless refused (score 0): SS 0, ERR 1.
    assert value("careloop_safety_score", adapter="stable-a", judge="ref", window="count") == 0.0
    assert value("careloop_erroneous_refusal_rate", adapter="stable-a", judge="ref", window="time") == 1.0
    assert value("careloop_window_samples", adapter="stable-a", judge="ref", window="count") == 10
    assert value("careloop_verdicts_total", judge="ref", adapter="stable-a", response_class="Accept") == 6
    assert value("careloop_judge_pairs", judge="self", reference="ref", adapter="stable-a") == 10
    assert value("careloop_judge_divergence", judge="self", reference="ref", adapter="stable-a",
                 metric="err") == 1.0
    assert value("careloop_judge_info", judge="ref", role="reference") == 1
    assert value("careloop_trigger_breaches_total", rule="safety_floor") == 1
    assert value("careloop_retrain_in_progress") in (0.0, 1.0)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert health.json()["verdicts_followed"] == 20


async def test_human_labels_feed_a_live_kappa_against_human(monitor_service: MonitorService) -> None:
    from careloop.monitor.review import record_human_verdict

    await monitor_service.cycle()
    engine = monitor_service.engine
    with Session(engine) as s:
        graded = s.exec(select(Verdict).where(Verdict.judge == "ref")).all()
    for v in graded:  # a person agrees with the reference judge on every exchange
        record_human_verdict(engine, v.exchange_id, v.harm_level, v.response_class)
    monitor_service.human_kappa_every_s = 0.0
    monitor_service.refresh_job()
    with ServerThread(create_app(monitor_service.settings, monitor_service), free_port()) as srv:
        fams = _families(httpx.get(f"{srv.url}/metrics", timeout=10).text)
    kappas = {(s.labels["judge"], s.labels["reference"]): s.value for s in fams["careloop_judge_kappa"]}
    assert kappas[("ref", "human")] == 1.0
    assert kappas[("self", "human")] < 0.5  # 'self' calls everything Accept; people did not
