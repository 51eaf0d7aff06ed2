"""Prometheus metrics, one registry per app (no module-level singletons)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "ragtune_requests", "HTTP requests", ["route", "method", "status"], registry=r
        )
        self.latency = Histogram(
            "ragtune_request_seconds",
            "HTTP request latency",
            ["route"],
            registry=r,
            buckets=_LATENCY_BUCKETS,
        )
        self.ttft = Histogram(
            "ragtune_time_to_first_token_seconds",
            "time to the first generated token",
            ["kind"],
            registry=r,
            buckets=_LATENCY_BUCKETS,
        )
        self.tokens = Counter(
            "ragtune_tokens",
            "tokens processed; prompt_cached: prompt tokens the engine's prefix cache held "
            "(the hit rate is prompt_cached / prompt)",
            ["type"],
            registry=r,
        )
        self.cached_share = Histogram(
            "ragtune_prompt_cached_ratio",
            "per request: the share of its prompt tokens served from the engine's prefix cache",
            ["kind"],
            registry=r,
            buckets=(0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0),
        )
        self.retrieval = Histogram(
            "ragtune_retrieval_seconds",
            "retrieval latency per request",
            ["mode"],
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1),
        )
        self.model_use = Counter(
            "ragtune_model_requests", "generation requests per model", ["kind", "model"], registry=r
        )
        self.routes = Counter(
            "ragtune_route_requests",
            "model: auto requests per model chosen; fallback: no profile fitted clearly",
            ["model", "fallback"],
            registry=r,
        )
        self.route_seconds = Histogram(
            "ragtune_route_seconds",
            "time model: auto takes to choose",
            registry=r,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1),
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
