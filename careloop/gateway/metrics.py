"""The gateway's Prometheus metrics (names fixed by the design), in a registry of their own per app."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Fine buckets where the gateway's own time lives (tens of microseconds to a few milliseconds).
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.01, 0.025,
                    0.05, 0.1, 0.25)
UPSTREAM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class GatewayMetrics:
    """Every `careloop_` metric the gateway exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("careloop_requests",
                                "Chat requests by target adapter, HTTP status and client key name.",
                                ["adapter", "code", "key"], registry=r)
        self.overhead = Histogram("careloop_gateway_overhead_seconds",
                                  "Time spent in the gateway itself (total minus waiting on vLLM).",
                                  buckets=OVERHEAD_BUCKETS, registry=r)
        self.upstream_latency = Histogram("careloop_upstream_latency_seconds",
                                          "Time waiting on vLLM per request (whole body or whole stream).",
                                          ["adapter"], buckets=UPSTREAM_BUCKETS, registry=r)
        self.queue_depth = Gauge("careloop_traffic_log_queue_depth",
                                 "Exchanges waiting for the background writer.", registry=r)
        self.dropped = Counter("careloop_traffic_log_dropped", "Exchanges dropped because the log queue was full.",
                               registry=r)
        self.written = Counter("careloop_traffic_log_written", "Exchanges written to the store.", registry=r)
        self.spooled = Counter("careloop_traffic_log_spooled",
                               "Exchanges spooled to local files while the store was unreachable.", registry=r)
        self.spool_pending = Gauge("careloop_traffic_log_spool_pending",
                                   "Exchanges in spool files not yet replayed into the store.", registry=r)
        self.quarantined = Counter("careloop_traffic_quarantined",
                                   "Exchange rows the store refused (kept in the quarantine with the reason), and "
                                   "WAL or spool files that could not be replayed.", registry=r)
        self.client_disconnects = Counter("careloop_client_disconnects",
                                          "Requests whose client left before the response ended (upstream "
                                          "request cancelled).", registry=r)
        self.rejected_connections = Counter("careloop_rejected_connections",
                                            "Connections closed for over-long request lines or headers (414/431) "
                                            "or slow clients (408).", ["reason"], registry=r)
        self.backpressure = Counter("careloop_traffic_log_backpressure",
                                    "Requests that waited for the log writer (queue above half full).", registry=r)
        self.sampled = Counter("careloop_sampled", "Exchanges sampled for judging, by adapter.", ["adapter"],
                               registry=r)
        self.adapter_info = Gauge("careloop_adapter_info", "1 for each live target and its role.",
                                  ["adapter", "role"], registry=r)
        self.canary_fraction = Gauge("careloop_canary_traffic_fraction",
                                     "Share of users routed to the canary (0 when none is live).", registry=r)
        # Operations (issue 23).
        self.replica_up = Gauge("careloop_upstream_replica_up",
                                "1 while a vLLM replica's circuit breaker is closed, 0 while it is open.",
                                ["replica"], registry=r)
        self._request_children: dict[tuple[str, int, str], Counter] = {}
        self._upstream_children: dict[str, Histogram] = {}

    def count_request(self, adapter: str, code: int, key_name: str = "none") -> None:
        """Count one request (children cached: this runs on the hot path)."""
        key = (adapter, code, key_name)
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.requests.labels(adapter, str(code), key_name)
        child.inc()

    def observe_upstream(self, adapter: str, seconds: float) -> None:
        """Record time spent waiting on vLLM for one request (children cached)."""
        child = self._upstream_children.get(adapter)
        if child is None:
            child = self._upstream_children[adapter] = self.upstream_latency.labels(adapter)
        child.observe(seconds)

    def set_routes(self, targets: list[tuple[str, str]], canary_fraction: float) -> None:
        """Publish the live targets and the canary share."""
        self.adapter_info.clear()
        for name, role in targets:
            self.adapter_info.labels(name, role).set(1)
        self.canary_fraction.set(canary_fraction)

    def set_replica_up(self, url: str, up: bool) -> None:
        """Publish a replica's breaker state (labelled host:port)."""
        self.replica_up.labels(url.split("://", 1)[-1]).set(1 if up else 0)

    def render(self) -> bytes:
        """The text exposition of every metric."""
        return generate_latest(self.registry)
