"""JSON logs with a request id, an access log line per request, and Prometheus metrics by route template."""

from __future__ import annotations

import bisect
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
NO_TRACE: dict[str, str] = {}


def configure_logging(level: str, *, trace_ids: bool = False) -> None:
    """JSON lines on stdout for ours and the libraries' logs (uvicorn, psycopg); called at startup only.
    With `trace_ids` (tracing is on), a line written inside a span carries its trace_id and span_id."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if trace_ids:
        from app.tracing import add_trace_ids  # imports OpenTelemetry: only when tracing is on

        shared.append(add_trace_ids)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.JSONRenderer(),
            ],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )


def access_log(
    method: str, route: str, status: int, seconds: float, request_id: str, trace: dict[str, str] | None = None
) -> None:
    """One JSON line per request, the same shape as the structlog lines, written without its processor
    chain: this runs on every request (benchmarks/app_throughput.py measures the difference). `trace`:
    the trace_id and span_id of the request's span when tracing is on."""
    now = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
    line = json.dumps(
        {
            "method": method,
            "route": route,
            "status": status,
            "duration_ms": round(seconds * 1000, 2),
            "request_id": request_id,
            **(trace or NO_TRACE),
            "event": "request",
            "level": "info",
            "timestamp": now,
        }
    )
    sys.stdout.write(line + "\n")


BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """Request metrics kept as plain numbers and exposed by a collector at scrape time.

    The event loop is one thread, so the request path needs no locks (prometheus_client's own metric
    objects take one per value: eleven per histogram observation). One registry per app instance.
    """

    def __init__(self, git_sha: str = "") -> None:
        self.git_sha = git_sha  # with a value: a `git_sha` label on the request metrics (the deploy's bake)
        self.serving = 0
        self.counts: dict[tuple[str, str, str], int] = {}
        self.latency: dict[tuple[str, str], list[float]] = {}  # per bucket, +Inf, then sum and count
        self.registry = CollectorRegistry()
        self.registry.register(self)  # type: ignore[arg-type]  # a collector: it has collect()

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, str(status))
        self.counts[key] = self.counts.get(key, 0) + 1
        series = self.latency.get((method, route))
        if series is None:
            series = self.latency[(method, route)] = [0.0] * (len(BUCKETS) + 3)
        series[bisect.bisect_left(BUCKETS, seconds)] += 1  # index len(BUCKETS) is +Inf
        series[-2] += seconds
        series[-1] += 1

    def collect(self) -> Iterator[Metric]:
        sha = ["git_sha"] if self.git_sha else []  # the revision's label, added at scrape time only
        value_of = [self.git_sha] if self.git_sha else []
        requests = CounterMetricFamily(
            "http_requests", "HTTP requests", labels=["method", "route", "status", *sha]
        )
        for labels, value in self.counts.items():
            requests.add_metric([*labels, *value_of], value)
        yield requests
        latency = HistogramMetricFamily(
            "http_request_duration_seconds", "HTTP request latency", labels=["method", "route", *sha]
        )
        for labels, series in self.latency.items():
            cumulative, buckets = 0.0, []
            for bound, count in zip((*map(str, BUCKETS), "+Inf"), series[: len(BUCKETS) + 1], strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            latency.add_metric([*labels, *value_of], buckets, series[-2])
        yield latency
        yield GaugeMetricFamily("http_requests_in_flight", "HTTP requests being served", value=self.serving)


class ObservabilityMiddleware:
    """Pure ASGI middleware (cheap): request id in and out, access log, metrics, body size limit."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        max_body_bytes: int,
        trace_ids: Callable[[], dict[str, str] | None] | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body = max_body_bytes
        self.trace_ids = trace_ids  # app.tracing.current_ids when tracing is on

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        incoming, length = _headers(scope)
        request_id = incoming if incoming and REQUEST_ID.match(incoming) else os.urandom(16).hex()
        status = 500
        if length and length.isdigit() and int(length) > self.max_body:
            await _too_large(send, request_id, self.max_body)
            self._record(scope, 413, start, request_id)
            return

        received = 0
        refused = False

        async def limited_receive() -> Message:
            # A chunked body can pass the limit mid-stream: answer 413 ourselves and tell the app the
            # client left, so it stops reading (an exception here would become FastAPI's generic 400).
            nonlocal received, refused, status
            message = await receive()
            if message["type"] == "http.request" and not refused:
                received += len(message.get("body", b""))
                if received > self.max_body:
                    refused, status = True, 413
                    await _too_large(send, request_id, self.max_body)
                    return {"type": "http.disconnect"}
            return message

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if refused:
                return
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        self.metrics.serving += 1
        try:
            await self.app(scope, limited_receive, send_with_id)
        finally:
            self.metrics.serving -= 1
            self._record(scope, status, start, request_id)

    def _record(self, scope: Scope, status: int, start: float, request_id: str) -> None:
        duration = time.perf_counter() - start
        route = getattr(scope.get("route"), "path", None) or "unmatched"
        method = scope["method"]
        self.metrics.observe(method, route, status, duration)
        # The route template, never the raw path or query string: ids and search terms stay out of logs.
        access_log(method, route, status, duration, request_id, self.trace_ids() if self.trace_ids else None)


def _headers(scope: Scope) -> tuple[str | None, str | None]:
    """X-Request-ID and Content-Length, in one pass over the headers."""
    request_id = length = None
    for key, value in scope["headers"]:
        if key == b"x-request-id":
            request_id = value.decode("latin-1")
        elif key == b"content-length":
            length = value.decode("latin-1")
    return request_id, length


async def _too_large(send: Send, request_id: str, limit: int) -> None:
    body = b'{"error":"request body too large","limit_bytes":%d}' % limit
    headers: list[Any] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", request_id.encode()),
    ]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})
