"""The worker's /metrics against a REAL Redis: the backlog counts unread and pending entries of the group,
the heartbeat's age, and an unreachable Redis reported as such rather than as an empty backlog."""

from __future__ import annotations

import dataclasses
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from app import heartbeat
from app.jobs import GROUP, STREAM
from app.settings import Settings, SettingsError
from app.tests.conftest import Redis, free_port
from app.worker_metrics import WorkerCollector, serve

pytestmark = pytest.mark.services


@pytest.fixture
def settings(redis_server: Redis, tmp_path: Path) -> Settings:
    redis.Redis.from_url(redis_server.url).delete(STREAM)
    return Settings(
        database_url="postgresql://unused@127.0.0.1:9/unused",
        redis_url=redis_server.url,
        host="127.0.0.1",
        worker_heartbeat_file=str(tmp_path / "beat"),
        worker_metrics_port=free_port(),
    )


@pytest.fixture
def r(redis_server: Redis) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


def scrape(port: int) -> dict[str, float]:
    """name{labels} -> value of every sample on http://127.0.0.1:port/metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


BACKLOG = f'worker_backlog{{group="{GROUP}",stream="{STREAM}"}}'


def test_backlog_counts_unread_and_pending_entries(settings: Settings, r: redis.Redis) -> None:
    for n in range(7):
        r.xadd(STREAM, {"id": str(n)})
    collector = serve(settings)
    assert collector is not None
    try:
        assert scrape(settings.worker_metrics_port)[BACKLOG] == 7  # no group yet: the whole stream waits
        r.xgroup_create(STREAM, GROUP, id="0")
        delivered = r.xreadgroup(GROUP, "c1", {STREAM: ">"}, count=3)
        ids = [entry_id for entry_id, _ in delivered[0][1]]
        r.xack(STREAM, GROUP, ids[0])
        samples = scrape(settings.worker_metrics_port)
        assert samples[BACKLOG] == 6  # 4 never delivered + 2 delivered, not acknowledged
        assert samples["worker_redis_up"] == 1
        assert "worker_heartbeat_age_seconds" not in samples  # no beat yet: no sample, not 0
        heartbeat.beat(settings.worker_heartbeat_file)
        assert 0 <= scrape(settings.worker_metrics_port)["worker_heartbeat_age_seconds"] < 5
    finally:
        collector.close()


def test_unreachable_redis_is_not_an_empty_backlog(tmp_path: Path) -> None:
    settings = Settings(
        database_url="postgresql://unused@127.0.0.1:9/unused",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        worker_heartbeat_file=str(tmp_path / "beat"),
    )
    collector = WorkerCollector(settings, timeout=0.5)
    try:
        families = {family.name: family for family in collector.collect()}
        assert families["worker_backlog"].samples == []
        assert families["worker_redis_up"].samples[0].value == 0
    finally:
        collector.close()


def test_port_taken_leaves_the_worker_running(settings: Settings) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = dataclasses.replace(settings, worker_metrics_port=held.getsockname()[1])
        assert serve(taken) is None


def test_port_zero_serves_nothing(settings: Settings) -> None:
    assert serve(dataclasses.replace(settings, worker_metrics_port=0)) is None


def test_metrics_port_setting() -> None:
    base = {"DATABASE_URL": "postgresql://a@b/c", "REDIS_URL": "redis://r:6379/0"}
    assert Settings.from_env(base).worker_metrics_port == 9100
    assert Settings.from_env({**base, "WORKER_METRICS_PORT": "0"}).worker_metrics_port == 0
    with pytest.raises(SettingsError, match="WORKER_METRICS_PORT"):
        Settings.from_env({**base, "WORKER_METRICS_PORT": "70000"})
