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

from deployments.models import ITL_BUCKETS_MS, TTFT_BUCKETS_MS

CONTENT_TYPE = CONTENT_TYPE_LATEST
TTFT_BUCKETS_S = [b / 1000 for b in TTFT_BUCKETS_MS]
ITL_BUCKETS_S = [b / 1000 for b in ITL_BUCKETS_MS]


class Labelled:
    """A metric whose children are kept by their label values: prometheus_client checks
    and locks on every `labels()` call, several times per proxied request, and the labels
    a gateway sees (models, replicas, statuses) repeat."""

    def __init__(self, metric):
        self.metric = metric
        self.children: dict[tuple[str, ...], object] = {}

    def labels(self, *values: str):
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = self.metric.labels(*values)
        return child

    def __getattr__(self, name: str):
        return getattr(self.metric, name)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Labelled(
            Counter(
                "gantry_gateway_requests_total",
                "Requests",
                ["model", "status"],
                registry=self.registry,
            )
        )
        self.latency = Labelled(
            Histogram(
                "gantry_gateway_request_seconds",
                "Request latency",
                ["model"],
                registry=self.registry,
            )
        )
        # Per deployment (its id: names repeat across organizations) and replica. A
        # non-streamed answer reaches the client whole, so its first token is its end.
        self.ttft = Labelled(
            Histogram(
                "gantry_gateway_time_to_first_token_seconds",
                "Time from the request reaching the gateway to the first generated token",
                ["deployment", "model", "replica"],
                buckets=TTFT_BUCKETS_S,
                registry=self.registry,
            )
        )
        self.itl = Labelled(
            Histogram(
                "gantry_gateway_inter_token_latency_seconds",
                "Mean time between generated tokens of one streamed answer",
                ["deployment", "model", "replica"],
                buckets=ITL_BUCKETS_S,
                registry=self.registry,
            )
        )
        self.queue = Labelled(
            Histogram(
                "gantry_gateway_queue_seconds",
                "Time a request waited in the gateway before an engine took it "
                "(waking a deployment, waiting for a replica)",
                ["deployment", "model"],
                buckets=TTFT_BUCKETS_S,
                registry=self.registry,
            )
        )
        self.prefix_routed = Labelled(
            Counter(
                "gantry_gateway_prefix_routed_total",
                "Prefix-affinity requests: sent to their prefix's home (affinity), to a new "
                "home (new), passed on by the load bound (spill), or moving the prefix's "
                "home after spills in a row (moved)",
                ["deployment", "outcome"],
                registry=self.registry,
            )
        )
        self.unreachable = Labelled(
            Counter(
                "gantry_gateway_replica_unreachable_total",
                "Requests a replica could not take (no connection, or closed before answering)",
                ["replica"],
                registry=self.registry,
            )
        )
        # Refreshed with each load report for the organizations seen since the last.
        self.spend = Gauge(
            "gantry_org_spend_cents",
            "Spend of the organization this month",
            ["organization"],
            registry=self.registry,
        )
        self.spend_limit = Gauge(
            "gantry_org_spend_limit_cents",
            "Monthly spend limit of the organization (0: none)",
            ["organization"],
            registry=self.registry,
        )
        self.tokens = Labelled(
            Counter(
                "gantry_gateway_tokens_total", "Tokens", ["model", "kind"], registry=self.registry
            )
        )
        self.in_flight = Labelled(
            Gauge(
                "gantry_gateway_in_flight",
                "Requests in flight per replica",
                ["replica"],
                registry=self.registry,
            )
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
