"""Routes through FastAPI's TestClient: probes, metrics, request ids and every bad input as a JSON 4xx.

Postgres and Redis point at closed ports here: what needs them must degrade to a clear 503, never a 500.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from app.tests.conftest import free_port


@pytest.fixture
def client() -> Iterator[TestClient]:
    settings = Settings(
        database_url=f"postgresql://u:p@127.0.0.1:{free_port()}/x",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        git_sha="deadbeef",
        image_digest="sha256:abc",
        ready_timeout=0.2,
        max_body_bytes=2048,
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def test_health_needs_no_dependency(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}


def test_version_reports_build(client: TestClient) -> None:
    assert client.get("/version").json() == {
        "git_sha": "deadbeef",
        "image_digest": "sha256:abc",
        "version": "0.1.0",
    }


def test_startup_is_ready_after_lifespan(client: TestClient) -> None:
    assert client.get("/startup").status_code == 200


def test_ready_names_failed_checks(client: TestClient) -> None:
    response = client.get("/ready")
    assert response.status_code == 503
    assert response.json()["failed"] == ["postgres", "redis"]


def test_ready_fails_once_the_server_drains(client: TestClient) -> None:
    client.app.state.drain()  # type: ignore[attr-defined]
    response = client.get("/ready")
    assert (response.status_code, response.json()) == (503, {"status": "draining"})
    assert client.get("/health").status_code == 200  # liveness: draining is not dead


def test_request_id_is_echoed_or_generated(client: TestClient) -> None:
    assert client.get("/health", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"] == "abc-123"
    generated = client.get("/health", headers={"X-Request-ID": "bad id\twith spaces"}).headers["x-request-id"]
    assert len(generated) == 32


def test_metrics_use_route_templates_not_raw_paths(client: TestClient) -> None:
    client.get("/notes/12345")
    client.get("/nowhere/999")
    text = client.get("/metrics").text
    assert 'route="/notes/{note_id}"' in text
    assert "12345" not in text
    assert 'route="unmatched"' in text
    assert "http_request_duration_seconds_bucket" in text
    assert "http_requests_in_flight" in text


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("post", "/notes", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 422),
        ("post", "/notes", {"json": {"title": 42}}, 422),
        ("post", "/notes", {"json": {"title": ""}}, 422),
        ("post", "/notes", {"json": {"body": "no title"}}, 422),
        ("post", "/notes", {"content": b"x" * 4096, "headers": {"content-type": "application/json"}}, 413),
        ("get", "/notes/abc", {}, 422),
        ("get", "/notes/0", {}, 422),
        ("get", "/notes/99999999999999999999999", {}, 422),
        ("get", "/notes?limit=1000", {}, 422),
        ("get", "/nowhere", {}, 404),
        ("delete", "/notes/1", {}, 405),
    ],
)
def test_bad_input_is_a_json_4xx(
    client: TestClient, method: str, path: str, kwargs: dict, status: int
) -> None:
    response = getattr(client, method)(path, **kwargs)
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/json")
    assert "error" in response.json() or "detail" in response.json()


def test_chunked_oversize_body_is_413(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(10):
            yield b"x" * 512

    response = client.post("/notes", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"] == "request body too large"


def test_database_down_is_503_not_500(client: TestClient) -> None:
    response = client.post("/notes", json={"title": "t"})
    assert response.status_code == 503
    assert response.json() == {"error": "postgres unavailable"}


def test_histogram_buckets_are_cumulative_and_le_inclusive() -> None:
    from prometheus_client import generate_latest

    from app.observability import Metrics

    metrics = Metrics()
    for seconds in (0.005, 0.2, 9.0):  # on a bound, in the middle, past the last bound
        metrics.observe("GET", "/x", 200, seconds)
    text = generate_latest(metrics.registry).decode()
    assert 'http_request_duration_seconds_bucket{le="0.005",method="GET",route="/x"} 1.0' in text
    assert 'http_request_duration_seconds_bucket{le="0.25",method="GET",route="/x"} 2.0' in text
    assert 'http_request_duration_seconds_bucket{le="5.0",method="GET",route="/x"} 2.0' in text
    assert 'http_request_duration_seconds_bucket{le="+Inf",method="GET",route="/x"} 3.0' in text
    assert 'http_request_duration_seconds_count{method="GET",route="/x"} 3.0' in text
    assert 'http_requests_total{method="GET",route="/x",status="200"} 3.0' in text
