"""The server's Prometheus metrics (prometheus_client, one registry per app): requests by
endpoint and status, latency, batch sizes, queue depth, generated tokens per expert group."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class ServeMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("utamoe_requests", "HTTP requests", ["endpoint", "status"], registry=r)
        self.latency = Histogram("utamoe_request_seconds", "request latency", ["endpoint"], registry=r,
                                 buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
        self.batch_size = Histogram("utamoe_batch_size", "requests per decoding batch", registry=r,
                                    buckets=(1, 2, 4, 8, 16, 32, 64))
        self.queue_depth = Gauge("utamoe_queue_depth", "requests waiting for a batch", registry=r)
        self.tokens = Counter("utamoe_generated_tokens", "generated tokens by the expert group the "
                              "first MoE layer routed them to", ["group"], registry=r)

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def count_tokens(self, results) -> None:
        for res in results:
            for tok in res.trace:
                if tok["layers"]:
                    self.tokens.labels(str(tok["layers"][0]["group"])).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
