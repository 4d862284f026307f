"""Prometheus metrics (``GET /metrics``), in the ``ragserve_`` namespace.

Each app has its own registry, so several servers in one process (tests) never collide. Routes
and strategies are fixed label sets, so a client cannot grow the series without bound.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ragserve.engine.events import Finished

NS = "ragserve"
ROUTES = frozenset(
    {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/retrieve",
        "/v1/models",
        "/v1/indexes",
        "/health",
        "/metrics",
        "/admin/reload",
    }
)
LATENCY = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)
GAPS = (0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)
# Why a request was refused before any work, by status.
REJECTIONS = {401: "unauthorized", 403: "forbidden", 413: "too_large", 429: "rate_limited",
              503: "overloaded", 504: "deadline"}  # fmt: skip


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        common = {"namespace": NS, "registry": r}
        self.requests = Counter(
            "requests", "HTTP requests by route, strategy and status",
            ["route", "strategy", "status"], **common,
        )  # fmt: skip
        self.latency = Histogram(
            "request_duration_seconds", "Request time to the last byte",
            ["route", "strategy"], buckets=LATENCY, **common,
        )  # fmt: skip
        self.ttft = Histogram(
            "time_to_first_token_seconds", "Request start to the first answer text",
            ["route", "strategy"], buckets=LATENCY, **common,
        )  # fmt: skip
        self.itl = Histogram(
            "inter_token_latency_seconds", "Gaps between streamed pieces of answer text",
            ["route", "strategy"], buckets=GAPS, **common,
        )  # fmt: skip
        self.prompt_tokens = Counter(
            "prompt_tokens", "Prompt tokens evaluated", ["route", "strategy"], **common
        )
        self.generation_tokens = Counter(
            "generation_tokens", "Tokens generated", ["route", "strategy"], **common
        )
        self.retrievals = Counter(
            "retrieval_requests", "Retriever calls by requests", ["retriever"], **common
        )
        self.retrieval_queries = Counter(
            "retrieval_queries", "Queries searched", ["retriever"], **common
        )
        self.retrieval_latency = Histogram(
            "retrieval_duration_seconds", "Retriever call time as a request sees it",
            ["retriever"], buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4),
            **common,
        )  # fmt: skip
        self.in_flight = Gauge("requests_in_flight", "Requests admitted, not finished", **common)
        self.queue_depth = Gauge(
            "queue_depth", "Requests waiting for a free generation slot", **common
        )
        self.rejections = Counter("rejections", "Requests refused, by cause", ["cause"], **common)
        self.spec_steps = Counter(
            "speculation_steps", "Steps of requests that speculate", ["strategy"], **common
        )
        self.spec_accepted = Counter(
            "speculation_accepted_steps", "Speculative steps verified correct", ["strategy"],
            **common,
        )  # fmt: skip
        self.spec_rollbacks = Counter(
            "speculation_rollbacks", "Speculative steps rolled back", ["strategy"], **common
        )
        self.iterations = Histogram(
            "auto_rag_iterations", "Model turns per auto_rag request",
            buckets=(1, 2, 3, 4, 5, 6, 8, 10, 15, 20), **common,
        )  # fmt: skip

    def watch(self, in_flight: Callable[[], int], queue_depth: Callable[[], int]) -> None:
        self.in_flight.set_function(in_flight)
        self.queue_depth.set_function(queue_depth)

    def searched(self, retriever: str, queries: int, seconds: float) -> None:
        self.retrievals.labels(retriever).inc()
        self.retrieval_queries.labels(retriever).inc(queries)
        self.retrieval_latency.labels(retriever).observe(seconds)

    def finished(self, route: str, strategy: str, event: Finished) -> None:
        self.prompt_tokens.labels(route, strategy).inc(event.usage.prompt_tokens)
        self.generation_tokens.labels(route, strategy).inc(event.usage.completion_tokens)
        if event.iterations is not None:
            self.iterations.observe(event.iterations)
        if event.speculation is not None:
            s = event.speculation
            self.spec_steps.labels(strategy).inc(s.steps)
            self.spec_accepted.labels(strategy).inc(s.accepted)
            self.spec_rollbacks.labels(strategy).inc(s.rollbacks)


class TokenClock:
    """TTFT and inter-token gaps of one request, observed as its text comes out."""

    def __init__(self, metrics: Metrics, route: str, strategy: str):
        self.metrics, self.labels = metrics, (route, strategy)
        self.start = time.perf_counter()
        self.last: float | None = None

    def text(self) -> None:
        now = time.perf_counter()
        if self.last is None:
            self.metrics.ttft.labels(*self.labels).observe(now - self.start)
        else:
            self.metrics.itl.labels(*self.labels).observe(now - self.last)
        self.last = now


class RequestMetrics:
    """Counts every HTTP request by route, strategy (set by the route on ``request.state``) and
    status, and times it to its last byte; refusals are counted by cause. Plain ASGI, so streams
    pass through untouched."""

    def __init__(self, app: ASGIApp, metrics: Callable[[], Metrics | None]):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def watched(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watched)
        finally:
            self._record(scope, status, time.perf_counter() - start)

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        m = self.metrics()
        if m is None:
            return
        path = scope.get("path", "")
        route = (
            path
            if path in ROUTES
            else "/v1/models/{id}"
            if path.startswith("/v1/models/")
            else "other"
        )
        state = scope.get("state") or {}
        strategy = state.get("strategy", "")
        m.requests.labels(route, strategy, str(status)).inc()
        m.latency.labels(route, strategy).observe(seconds)
        if status in REJECTIONS:
            cause = "draining" if status == 503 and state.get("draining") else REJECTIONS[status]
            m.rejections.labels(cause).inc()
