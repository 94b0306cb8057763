"""The monitor's Prometheus metrics (names fixed by the design): verdicts, windows, divergence, triggers, runs."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from careloop.monitor.windows import WindowSet

# Every metric family the monitor exports (what the dashboard and the alert rules may use).
WINDOW_METRICS: dict[str, str] = {
    "careloop_safety_score": "Safety Score (mean CARES score) of the rolling window.",
    "careloop_erroneous_refusal_rate": "Share of harmless (h=0) prompts answered with a refusal, rolling window.",
    "careloop_harmful_detection_f1": "F1 of harmful-query detection (h>=1 met with Caution/Refuse), window.",
    "careloop_overall_metric": "Overall Metric alpha*SS + (1-alpha)*(1-ERR) of the rolling window.",
    "careloop_window_samples": "Verdicts in the rolling window.",
    "careloop_window_harmless_samples": "Harmless (h=0) verdicts in the rolling window (ERR's denominator).",
}
DIVERGENCE_METRICS: dict[str, str] = {
    "careloop_judge_kappa": "Cohen's kappa on response class between a judge and the reference.",
    "careloop_judge_divergence": "|delta| of a window metric (safety_score, err) between a judge and the reference.",
    "careloop_judge_pairs": "Exchanges graded by both the judge and the reference in the divergence window.",
}
MONITOR_METRIC_NAMES: frozenset[str] = frozenset({
    *WINDOW_METRICS, *DIVERGENCE_METRICS,
    "careloop_verdicts_total", "careloop_trigger_breaches_total", "careloop_retrain_runs_total",
    "careloop_retrain_in_progress", "careloop_judge_info", "careloop_judge_queue_depth",
    "careloop_judge_failures_total", "careloop_monitor_cycle_seconds", "careloop_trigger_state",
})


class WindowCollector(Collector):
    """Reads the current rolling windows at scrape time, so no stale label sets linger."""

    def __init__(self, windows: Callable[[], WindowSet | None],
                 human: Callable[[], dict[str, float]] | None = None) -> None:
        self._windows = windows
        self._human = human or dict

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        windows = self._windows()
        labels = ["adapter", "judge", "window"]
        fams = {name: GaugeMetricFamily(name, doc, labels=labels) for name, doc in WINDOW_METRICS.items()}
        kappa = GaugeMetricFamily("careloop_judge_kappa", DIVERGENCE_METRICS["careloop_judge_kappa"],
                                  labels=["judge", "reference", "adapter"])
        div = GaugeMetricFamily("careloop_judge_divergence", DIVERGENCE_METRICS["careloop_judge_divergence"],
                                labels=["judge", "reference", "adapter", "metric"])
        pairs = GaugeMetricFamily("careloop_judge_pairs", DIVERGENCE_METRICS["careloop_judge_pairs"],
                                  labels=["judge", "reference", "adapter"])
        if windows is not None:
            for fig in windows.snapshot():
                key = [fig.adapter, fig.judge, fig.window]
                m = fig.metrics
                if m.n:
                    fams["careloop_safety_score"].add_metric(key, m.safety_score)
                    fams["careloop_harmful_detection_f1"].add_metric(key, m.f1)
                    fams["careloop_overall_metric"].add_metric(key, m.overall)
                if m.harmless:
                    fams["careloop_erroneous_refusal_rate"].add_metric(key, m.err)
                fams["careloop_window_samples"].add_metric(key, m.n)
                fams["careloop_window_harmless_samples"].add_metric(key, m.harmless)
            for d in windows.divergences():
                key = [d.judge, d.reference, d.adapter]
                pairs.add_metric(key, d.n)
                if d.n:
                    kappa.add_metric(key, d.kappa)
                    div.add_metric([*key, "safety_score"], d.delta_ss)
                    div.add_metric([*key, "err"], d.delta_err)
        for judge, value in self._human().items():  # κ against the people's labels from `careloop review`
            kappa.add_metric([judge, "human", "all"], value)
        yield from fams.values()
        yield kappa
        yield div
        yield pairs


class MonitorMetrics:
    """The monitor's metric objects on one registry (a fresh one per instance unless given)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.verdicts = Counter("careloop_verdicts_total", "Verdicts written, by judge, adapter and class.",
                                ["judge", "adapter", "response_class"], registry=r)
        self.judge_failures = Counter("careloop_judge_failures_total",
                                      "Judge calls the worker saw fail (kind: unavailable|item|exhausted).",
                                      ["judge", "kind"], registry=r)
        self.queue_depth = Gauge("careloop_judge_queue_depth", "Sampled exchanges waiting for judges.",
                                 registry=r)
        self.breaches = Counter("careloop_trigger_breaches_total", "Rule breaches (entering the breached state).",
                                ["rule"], registry=r)
        self.trigger_state = Gauge("careloop_trigger_state", "1 while a rule is breached for an adapter/judge.",
                                   ["rule", "adapter", "judge"], registry=r)
        self.retrain_runs = Counter("careloop_retrain_runs_total", "Retrain runs that ended, by outcome.",
                                    ["outcome"], registry=r)
        self.retrain_in_progress = Gauge("careloop_retrain_in_progress", "1 while a retrain run is active.",
                                         registry=r)
        self.judge_info = Gauge("careloop_judge_info", "Configured judges; role is reference or secondary.",
                                ["judge", "role"], registry=r)
        self.cycle_seconds = Gauge("careloop_monitor_cycle_seconds", "Duration of the last run of each job.",
                                   ["job"], registry=r)
        self._windows: WindowSet | None = None
        self.human_kappa: dict[str, float] = {}
        r.register(WindowCollector(lambda: self._windows, lambda: self.human_kappa))
        # Families exist from the first scrape, so `increase()` and the dashboard see zeros, not gaps.
        self.retrain_in_progress.set(0)
        for outcome in ("succeeded", "failed", "promoted", "rolled_back"):
            self.retrain_runs.labels(outcome=outcome)

    def attach_windows(self, windows: WindowSet) -> None:
        """Export this window set's figures at scrape time."""
        self._windows = windows

    def set_judges(self, judges: Iterable[str], reference: str) -> None:
        """Publish which judges run and which one is the reference."""
        for name in judges:
            self.judge_info.labels(judge=name, role="reference" if name == reference else "secondary").set(1)

    def exposition(self) -> bytes:
        """The text exposition of this registry."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry)
