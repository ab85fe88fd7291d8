"""The app against REAL PostgreSQL and Redis servers: migrations, notes, cache, readiness flips."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.migrations import STEPS, migrate
from app.settings import Settings
from app.tests.conftest import Postgres, Redis, _wait_port, free_port
from app.worker import Stop, Worker

pytestmark = pytest.mark.services
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def client(postgres: Postgres, redis_server: Redis) -> Iterator[TestClient]:
    migrate(postgres.url)
    settings = Settings(database_url=postgres.url, redis_url=redis_server.url, ready_timeout=0.5)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def test_migrate_is_idempotent(postgres: Postgres) -> None:
    migrate(postgres.url)
    assert migrate(postgres.url) == []
    with psycopg.connect(postgres.url) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
    assert versions == [v for v, _, _ in STEPS]


def test_migrate_command(postgres: Postgres, redis_server: Redis) -> None:
    env = {**os.environ, "DATABASE_URL": postgres.url, "REDIS_URL": redis_server.url}
    result = subprocess.run(
        [sys.executable, "-m", "app", "migrate"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "app: migrate: schema is current" or "applied" in result.stdout


def test_create_list_get_and_cache(client: TestClient, postgres: Postgres, redis_server: Redis) -> None:
    created = client.post("/notes", json={"title": "hello", "body": "world"})
    assert created.status_code == 201
    note = created.json()
    assert (note["words"], note["summary"], note["tags"], note["processed_at"]) == (None, None, None, None)
    assert client.get(f"/notes/{note['id']}").json() == note
    assert note in client.get("/notes?limit=100").json()
    import redis

    cache = redis.Redis.from_url(redis_server.url)
    # Not cached until the worker has processed it: a cached copy would hide the result for a minute.
    assert cache.get(f"note:{note['id']}") is None
    settings = Settings(database_url=postgres.url, redis_url=redis_server.url)
    worker = Worker(settings, stop=Stop())
    try:
        assert worker.process(note["id"]) is True
    finally:
        worker.close()
    processed = client.get(f"/notes/{note['id']}").json()
    assert (processed["words"], processed["summary"], processed["tags"]) == (1, "world", [])
    assert cache.get(f"note:{note['id']}") is not None
    assert client.get(f"/notes/{note['id']}").json() == processed
    assert client.get("/notes/987654321").status_code == 404


def test_ready_is_200_with_both_up(client: TestClient) -> None:
    response = client.get("/ready")
    assert response.status_code == 200, response.json()
    assert response.json()["checks"] == {"postgres": True, "redis": True}


def test_a_redis_blip_degrades_but_keeps_the_instance_ready(client: TestClient, redis_server: Redis) -> None:
    assert client.get("/ready").status_code == 200
    redis_server.stop()
    try:
        response = client.get("/ready")
        assert response.status_code == 200  # a shared dependency must not empty the load balancer
        assert response.json()["status"] == "degraded"
        assert response.json()["failed"] == ["redis"]
        # The cache is an optimisation: reads still work from Postgres.
        assert client.get("/notes").status_code == 200
    finally:
        redis_server.start()
    assert _eventually_ready(client)


def test_a_postgres_blip_degrades_and_writes_answer_503(client: TestClient, postgres: Postgres) -> None:
    assert client.get("/ready").status_code == 200
    postgres.stop()
    try:
        response = client.get("/ready")
        assert response.status_code == 200
        assert response.json()["status"] == "degraded"
        assert response.json()["failed"] == ["postgres"]
        assert client.post("/notes", json={"title": "x"}).status_code == 503
    finally:
        postgres.start()
    assert _eventually_ready(client)


def _eventually_ready(client: TestClient, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/ready").json()["status"] == "ready":  # every dependency answers again
            return True
        time.sleep(0.2)
    return False


def _serve(postgres: Postgres, redis_server: Redis, port: int, **env: str) -> subprocess.Popen[str]:
    """`python -m app serve` on 127.0.0.1:``port`` against the test servers (schema applied), output piped."""
    migrate(postgres.url)
    environ = {
        **os.environ,
        "DATABASE_URL": postgres.url,
        "REDIS_URL": redis_server.url,
        "PORT": str(port),
        "HOST": "127.0.0.1",
        **env,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "app", "serve"],
        cwd=ROOT,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_server_drains_in_flight_requests_on_sigterm(postgres: Postgres, redis_server: Redis) -> None:
    """SIGTERM arrives while a request body is still arriving: that request completes, then pools close."""
    port = free_port()
    proc = _serve(postgres, redis_server, port, GIT_SHA="sig-test")
    try:
        _wait_port(port)

        def slow_body() -> Iterator[bytes]:
            yield b'{"title": "in flight", '
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            yield b'"body": "finished after SIGTERM"}'

        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:
            assert http.get("/version").json()["git_sha"] == "sig-test"
            response = http.post("/notes", content=slow_body(), headers={"content-type": "application/json"})
        assert response.status_code == 201
        assert response.json()["body"] == "finished after SIGTERM"
        # uvicorn re-raises the signal after a graceful shutdown, so the exit status reports SIGTERM.
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
        out = proc.stdout.read() if proc.stdout else ""
    finally:
        if proc.poll() is None:
            proc.kill()
        if proc.stdout:
            proc.stdout.close()
    assert '"event": "stopped"' in out
    assert '"route": "/notes", "status": 201' in out


def test_on_sigterm_readiness_fails_first_while_requests_are_still_served(
    postgres: Postgres, redis_server: Redis
) -> None:
    """CONVEYOR_DRAIN_SECONDS (compose): /ready answers 503 at once, new connections are still served
    for the drain, then the server stops accepting and exits."""
    port = free_port()
    proc = _serve(postgres, redis_server, port, CONVEYOR_DRAIN_SECONDS="2")
    try:
        _wait_port(port)
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{url}/ready").status_code == 200
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        ready = httpx.get(f"{url}/ready")  # a new connection: still accepted
        assert (ready.status_code, ready.json()) == (503, {"status": "draining"})
        assert httpx.get(f"{url}/notes").status_code == 200
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode in (0, -signal.SIGTERM)
        assert time.monotonic() - signalled >= 2
        assert '"event": "draining"' in out
    finally:
        if proc.poll() is None:
            proc.kill()
