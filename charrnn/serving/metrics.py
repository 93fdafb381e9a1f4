"""`GET /metrics` of `charrnn serve`: what the server has done and holds, in Prometheus's text format
(prometheus-client, part of the `serve` extra), for a scraper to watch it with.

    charrnn_requests_total{route, method, status}         requests answered
    charrnn_request_duration_seconds{route}                 a histogram of their latency (to the last byte)
    charrnn_generated_characters_total{model}               characters generated (echoed prompts not counted)
    charrnn_queue_depth{model} / charrnn_generating_streams{model} / charrnn_paused_streams{model}
                                                            a model worker's waiting requests and running samples
    charrnn_models_loaded                                   models served

`route` is the route's path (the template for /v1/models/{model}), or "other" for a path the server
does not have, so that a scan of paths cannot grow the series without end. The registry is the
server's own (not prometheus-client's global one): two servers in one process do not mix. The counts
of the workers are read when scraped; the rest is counted as it happens, from the event loop and the
pool's threads (prometheus-client's metrics take a lock).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from charrnn.serving.httpapp import NATIVE, Backend

ROUTES = (*(f"{NATIVE}/{op}" for op in ("next", "generate", "score", "models")), "/healthz", "/metrics",
          "/v1/completions", "/v1/models")
# Seconds: a `next` takes milliseconds, a long generation tens of seconds.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Metrics:
    """The server's metrics over one Backend; `observe` is Front's hook, `generated` the routes'."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("charrnn_requests", "Requests answered, by route, method and status.",
                                ("route", "method", "status"), registry=self.registry)
        self.latency = Histogram("charrnn_request_duration_seconds", "Time from a request's arrival to its "
                                 "answer's last byte.", ("route",), buckets=BUCKETS, registry=self.registry)
        self.pool_chars: dict[str, int] = {name: 0 for name in backend.models}  # generated on the pool
        self.lock = threading.Lock()
        self.registry.register(_Live(self))

    def route(self, path: str) -> str:
        if path in ROUTES:
            return path
        return "/v1/models/{model}" if path.startswith("/v1/models/") else "other"

    def observe(self, method: str, path: str, status: str, seconds: float) -> None:
        route = self.route(path)
        self.requests.labels(route, method, status).inc()
        self.latency.labels(route).observe(seconds)

    def generated(self, model: str, chars: int) -> None:
        """Characters generated on the pool (the model workers' engines count their own)."""
        with self.lock:
            self.pool_chars[model] = self.pool_chars.get(model, 0) + chars

    async def answer(self, request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    def route_entry(self) -> Route:
        return Route("/metrics", self.answer, methods=["GET"])


class _Live:
    """The metrics read from the workers when scraped."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Any]:
        b = self.m.backend
        chars = CounterMetricFamily("charrnn_generated_characters", "Characters generated (echoed prompts not "
                                    "counted).", labels=("model",))
        depth = GaugeMetricFamily("charrnn_queue_depth", "Requests waiting for a model's worker.", labels=("model",))
        streams = GaugeMetricFamily("charrnn_generating_streams", "Samples a model's worker is generating.",
                                    labels=("model",))
        paused = GaugeMetricFamily("charrnn_paused_streams", "Samples held for a slow reader.", labels=("model",))
        with self.m.lock:
            pool = dict(self.m.pool_chars)
        for name, worker in b.workers.items():
            load = worker.load()
            chars.add_metric([name], worker.engine_chars + pool.get(name, 0))
            depth.add_metric([name], load["waiting"])
            streams.add_metric([name], load["generating"])
            paused.add_metric([name], load["paused"])
        yield from (chars, depth, streams, paused)
        yield GaugeMetricFamily("charrnn_models_loaded", "Models the server serves.", value=len(b.models))
