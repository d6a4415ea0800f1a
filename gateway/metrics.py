"""The gateway's Prometheus metrics, in a registry of its own (one per app, so two apps in
one process — tests — never share counters)."""

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "gantry_gateway_requests_total",
            "Requests",
            ["model", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "gantry_gateway_request_seconds", "Request latency", ["model"], registry=self.registry
        )
        self.ttft = Histogram(
            "gantry_gateway_time_to_first_token_seconds",
            "Time to first byte",
            ["model"],
            registry=self.registry,
        )
        self.tokens = Counter(
            "gantry_gateway_tokens_total", "Tokens", ["model", "kind"], registry=self.registry
        )
        self.in_flight = Gauge(
            "gantry_gateway_in_flight",
            "Requests in flight per replica",
            ["replica"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
