"""The worker's /metrics (WORKER_METRICS_PORT, default 9100; 0: off): its backlog and its heartbeat's age.

Both are read when Prometheus scrapes, not on the job path: one XINFO GROUPS round trip to Redis and one
stat() per scrape. The worker process has no web server; prometheus_client serves these from a thread.

    worker_backlog{stream,group}        entries of the stream the group has not acknowledged yet:
                                        never delivered (XINFO GROUPS `lag`) plus delivered but pending
    worker_heartbeat_age_seconds        seconds since the worker loop last beat (no sample before the first)
    worker_redis_up                     1 when the backlog could be read, else 0
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import redis
import structlog
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from redis.exceptions import RedisError

from app import heartbeat
from app.jobs import GROUP, STREAM
from app.settings import Settings

log = structlog.get_logger("app.worker")


class WorkerCollector:
    """A prometheus_client collector over the stream's consumer group and the heartbeat file."""

    def __init__(self, settings: Settings, *, timeout: float = 2.0) -> None:
        self.heartbeat_file = settings.worker_heartbeat_file
        # Its own client: the scrape thread never shares a connection with the worker loop.
        self._redis = redis.Redis.from_url(
            settings.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout
        )

    def backlog(self) -> int:
        """Unacknowledged entries for GROUP; the whole stream when the group does not exist yet."""
        groups: list[dict[str, Any]] = self._redis.xinfo_groups(STREAM) if self._redis.exists(STREAM) else []
        for group in groups:
            name = group["name"].decode() if isinstance(group["name"], bytes) else group["name"]
            if name == GROUP:
                lag = group.get("lag")
                # Redis cannot tell the lag after entries were deleted before being read: count them all.
                unread = int(lag) if lag is not None else int(self._redis.xlen(STREAM))
                return unread + int(group["pending"])
        return int(self._redis.xlen(STREAM))

    def collect(self) -> Iterator[Metric]:
        """The three gauges, read now."""
        backlog = GaugeMetricFamily(
            "worker_backlog",
            "Stream entries the worker group has not acknowledged",
            labels=["stream", "group"],
        )
        try:
            backlog.add_metric([STREAM, GROUP], self.backlog())
            reachable = 1
        except (RedisError, OSError):
            reachable = 0
        yield backlog
        yield GaugeMetricFamily(
            "worker_redis_up", "1 when the backlog could be read from Redis", value=reachable
        )
        age = GaugeMetricFamily("worker_heartbeat_age_seconds", "Seconds since the worker loop last beat")
        seconds = heartbeat.age(self.heartbeat_file)
        if seconds is not None:
            age.add_metric([], seconds)
        yield age

    def close(self) -> None:
        """Close the scrape connection."""
        self._redis.close()


def serve(settings: Settings) -> WorkerCollector | None:
    """Serve /metrics on settings.worker_metrics_port from a daemon thread (None when the port is 0).

    A port already taken is logged, not fatal: the worker's jobs matter more than its metrics."""
    if not settings.worker_metrics_port:
        return None
    collector = WorkerCollector(settings)
    registry = CollectorRegistry()
    registry.register(collector)  # a collector: it has collect()
    try:
        start_http_server(settings.worker_metrics_port, addr=settings.host, registry=registry)
    except OSError as exc:
        log.warning("worker metrics not served", port=settings.worker_metrics_port, error=str(exc))
        collector.close()
        return None
    log.info("worker metrics served", port=settings.worker_metrics_port, path="/metrics")
    return collector
