"""Distributed tracing: one trace from an HTTP request with a W3C `traceparent` to the worker's job, the ids
in the JSON log lines of both; off by default with nothing installed; bad OTEL_* values refused."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import structlog
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, format_span_id, format_trace_id

from app.jobs import STREAM
from app.main import create_app
from app.migrations import migrate
from app.observability import configure_logging
from app.settings import Settings, SettingsError, traces_exporters
from app.tests.conftest import OtlpReceiver, Postgres, Redis, _wait_port, free_port
from app.tests.test_worker import eventually, processed, running
from app.tracing import Tracing, start

ROOT = Path(__file__).resolve().parents[2]
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
GOOD = {"DATABASE_URL": "postgresql://u:pw@db:5432/app", "REDIS_URL": "redis://cache:6379/0"}


# --- which exporter the standard variables ask for ------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, ()),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ("otlp",)),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://c.example/v1/traces"}, ("otlp",)),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, ("otlp",)),  # asked for: the SDK's default endpoint
        ({"OTEL_TRACES_EXPORTER": "Console"}, ("console",)),
        ({"OTEL_TRACES_EXPORTER": "otlp, console,otlp"}, ("otlp", "console")),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, ()),
        ({"OTEL_SDK_DISABLED": "TRUE", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, ()),
        # Disabled, nothing else is looked at: a stale bad value does not stop the service.
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "jaeger"}, ()),
        ({"OTEL_SDK_DISABLED": "false", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, ("otlp",)),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_PROPAGATORS": "tracecontext,baggage",
                "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": "0.25",
            },
            ("otlp",),
        ),
    ],
)
def test_exporters_from_the_standard_variables(env: dict[str, str], expected: tuple[str, ...]) -> None:
    assert traces_exporters(env) == expected
    assert Settings.from_env({**GOOD, **env}).traces_exporters == expected


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OTEL_SDK_DISABLED": "yes"}, "OTEL_SDK_DISABLED must be true or false, got 'yes'"),
        ({"OTEL_TRACES_EXPORTER": "jaeger"}, "OTEL_TRACES_EXPORTER must be otlp, console or none"),
        ({"OTEL_TRACES_EXPORTER": "otlp,none"}, "OTEL_TRACES_EXPORTER must be otlp, console or none"),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"},
            "OTEL_EXPORTER_OTLP_ENDPOINT must be an http:// or https:// URL with a host",
        ),
        (
            {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "grpc://c:4317"},
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT must be an http:// or https:// URL",
        ),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "OTEL_EXPORTER_OTLP_PROTOCOL must be http/protobuf (the only OTLP exporter installed),"
            " got 'grpc'",
        ),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"},
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL must be http/protobuf",
        ),
        (
            {"OTEL_TRACES_EXPORTER": "console", "OTEL_PROPAGATORS": "tracecontext,b3"},
            "OTEL_PROPAGATORS may list tracecontext, baggage, none (no other is installed), got 'b3'",
        ),
        (
            {"OTEL_TRACES_EXPORTER": "console", "OTEL_TRACES_SAMPLER": "sometimes"},
            "OTEL_TRACES_SAMPLER must be one of always_on, always_off, traceidratio",
        ),
        (
            {"OTEL_TRACES_EXPORTER": "console", "OTEL_TRACES_SAMPLER": "traceidratio"}
            | {"OTEL_TRACES_SAMPLER_ARG": "10%"},
            "OTEL_TRACES_SAMPLER_ARG must be a number, got '10%'",
        ),
        (
            {"OTEL_TRACES_EXPORTER": "console", "OTEL_TRACES_SAMPLER": "parentbased_traceidratio"}
            | {"OTEL_TRACES_SAMPLER_ARG": "2"},
            "OTEL_TRACES_SAMPLER_ARG must be between 0.0 and 1.0, got 2",
        ),
    ],
)
def test_values_the_sdk_would_ignore_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as exc:
        Settings.from_env({**GOOD, **env})
    assert str(exc.value).startswith(message)


def test_bad_otel_value_stops_the_process_at_start_in_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app", "serve"],
        cwd=ROOT,
        env={"PATH": os.environ["PATH"], **GOOD, "OTEL_TRACES_EXPORTER": "zipkin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "app: invalid settings: OTEL_TRACES_EXPORTER must be otlp, console or none"
        " (no other exporter is installed), got 'zipkin'"
    ]
    assert result.stdout == ""


# --- off by default: nothing installed, the request path unchanged -------------------------------

OFF_PROBE = """
import json, sys
import psycopg, redis
from fastapi.testclient import TestClient
from opentelemetry import trace
from app.__main__ import _tracing
from app.main import create_app
from app.observability import configure_logging
from app.settings import Settings

settings = Settings.from_env()
tracing = _tracing(settings, "web")
configure_logging(settings.log_level, trace_ids=bool(settings.traces_exporters))
app = create_app(settings, tracing)
with TestClient(app) as client:
    response = client.get("/health", headers={"traceparent": sys.argv[1]})
print(json.dumps({
    "exporters": settings.traces_exporters,
    "tracing": tracing is not None,
    "status": response.status_code,
    "headers": sorted(response.headers),
    "provider": type(trace.get_tracer_provider()).__name__,
    "modules": sorted(m for m in sys.modules if m.startswith(
        ("opentelemetry.sdk.trace", "opentelemetry.instrumentation", "opentelemetry.exporter", "app.tracing")
    )),
    "wrapped": [
        hasattr(f, "__wrapped__")
        for f in (psycopg.connect, psycopg.AsyncConnection.connect, redis.Redis.execute_command)
    ],
    "middleware": [m.cls.__name__ for m in app.user_middleware],
    "stack": type(app.build_middleware_stack()).__name__,
}))
"""


def test_tracing_is_off_by_default_and_installs_nothing() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    result = subprocess.run(
        [sys.executable, "-c", OFF_PROBE, TRACEPARENT],
        cwd=ROOT,
        env={**env, **GOOD},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    *logs, probe = (json.loads(line) for line in result.stdout.splitlines())
    assert probe["exporters"] == []
    assert probe["tracing"] is False
    assert probe["status"] == 200
    assert probe["provider"] == "ProxyTracerProvider"  # the API's default: no SDK provider was set
    assert probe["modules"] == []  # neither the SDK's tracing, an instrumentation nor an exporter loaded
    assert probe["wrapped"] == [False, False, False]
    assert probe["middleware"] == ["ObservabilityMiddleware"]
    assert probe["stack"] == "ServerErrorMiddleware"  # Starlette's own stack, no OpenTelemetryMiddleware
    assert "traceparent" not in probe["headers"]
    access = [line for line in logs if line.get("event") == "request"]
    assert len(access) == 1
    assert "trace_id" not in access[0]
    assert "span_id" not in access[0]
    assert all("trace_id" not in line for line in logs)


# --- one trace from the request to the worker's job (real Postgres and Redis) ---------------------


@contextmanager
def json_logs() -> Iterator[io.StringIO]:
    """The process's JSON log lines (structlog, stdlib and the access log) written into a buffer, as
    configured at startup with tracing on. In the test body: pytest swaps sys.stdout between phases."""
    buffer, stdout = io.StringIO(), sys.stdout
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    sys.stdout = buffer
    try:
        configure_logging("info", trace_ids=True)
        yield buffer
    finally:
        sys.stdout = stdout
        root.handlers, root.level = handlers, level
        structlog.reset_defaults()


@pytest.fixture
def settings(postgres: Postgres, redis_server: Redis, tmp_path: Path) -> Settings:
    migrate(postgres.url)
    redis.Redis.from_url(redis_server.url).delete(STREAM)  # a fresh stream and group
    return Settings(
        database_url=postgres.url,
        redis_url=redis_server.url,
        ready_timeout=0.5,
        startup_timeout=5,
        worker_heartbeat_file=str(tmp_path / "worker-heartbeat"),
    )


@pytest.fixture
def tracing(settings: Settings) -> Iterator[tuple[Tracing, InMemorySpanExporter]]:
    """Web and worker share the process here, so they share one provider (the instrumentation of psycopg
    and Redis is process-wide); the spans are what two processes would export."""
    exporter = InMemorySpanExporter()
    started = start(settings, "web", exporter=exporter)
    assert started is not None
    try:
        yield started, exporter
    finally:
        started.shutdown()


@pytest.mark.services
def test_one_trace_from_the_request_to_the_workers_job_with_the_ids_in_the_logs(
    settings: Settings, tracing: tuple[Tracing, InMemorySpanExporter]
) -> None:
    tracer, exporter = tracing
    with (
        json_logs() as logs,
        TestClient(create_app(settings, tracer)) as client,
        running(settings, tracing=tracer),
    ):
        created = client.post(
            "/notes",
            json={"title": "traced", "body": "one trace, two processes"},
            headers={"traceparent": TRACEPARENT, "x-request-id": "req-traced-1"},
        )
        assert created.status_code == 201, created.text
        nid = created.json()["id"]
        with tracer.untraced():  # the test's own query is not the app's
            eventually(lambda: processed(settings.database_url, nid))
        # The job span ends after its XACK, a moment after the UPDATE is visible.
        eventually(lambda: tracer.provider.force_flush() and _job_spans(exporter))
    tracer.provider.force_flush()
    spans = exporter.get_finished_spans()

    server = _one(spans, lambda s: s.kind == SpanKind.SERVER and s.name == "POST /notes")
    assert format_trace_id(server.context.trace_id) == TRACE_ID
    assert parent(server) == int(PARENT_ID, 16)  # the caller's span, from `traceparent`
    assert server.parent.is_remote
    job = _one(_job_spans(exporter), lambda s: True)
    assert job.kind == SpanKind.CONSUMER
    assert format_trace_id(job.context.trace_id) == TRACE_ID
    assert parent(job) == server.context.span_id  # the request's span, carried on the stream entry
    assert dict(job.attributes)["messaging.destination.name"] == "notes:events"
    # The libraries' spans, from their own instrumentation, in the same trace under the right parents.
    web_insert = _one(spans, lambda s: s.name.startswith("INSERT"))
    xadd = _one(spans, lambda s: s.name == "XADD")
    update = _one(spans, lambda s: s.name.startswith("UPDATE"))
    xack = _one(spans, lambda s: s.name == "XACK")
    assert [parent(s) for s in (web_insert, xadd, update, xack)] == [server.context.span_id] * 2 + [
        job.context.span_id
    ] * 2
    assert {format_trace_id(s.context.trace_id) for s in (web_insert, xadd, update, xack)} == {TRACE_ID}
    # The worker's polling around the job is not traced: no XREADGROUP span, no trace of its own.
    assert not [s for s in spans if s.name in ("XREADGROUP", "XAUTOCLAIM")]
    assert {format_trace_id(s.context.trace_id) for s in spans} == {TRACE_ID}

    lines = [json.loads(line) for line in logs.getvalue().splitlines() if line.startswith("{")]
    access = _one(lines, lambda line: line.get("event") == "request" and line.get("route") == "/notes")
    assert access["request_id"] == "req-traced-1"
    assert (access["trace_id"], access["span_id"]) == (TRACE_ID, format_span_id(server.context.span_id))
    done = _one(lines, lambda line: line.get("event") == "note processed" and line.get("note_id") == nid)
    assert (done["trace_id"], done["span_id"]) == (TRACE_ID, format_span_id(job.context.span_id))
    # Outside a span (the worker's start and stop), a line carries no ids.
    started = _one(lines, lambda line: line.get("event") == "worker started")
    assert "trace_id" not in started


def parent(span: Any) -> int | None:
    """The span id of a span's parent, None for a root span."""
    return None if span.parent is None else int(span.parent.span_id)


def _job_spans(exporter: InMemorySpanExporter) -> list[Any]:
    return [s for s in exporter.get_finished_spans() if s.name == "process notes:events"]


def _one(items: Any, predicate: Any) -> Any:
    found = [item for item in items if predicate(item)]
    assert len(found) == 1, found
    return found[0]


@pytest.mark.services
def test_web_and_worker_processes_export_one_trace_over_otlp(
    settings: Settings, otlp_receiver: OtlpReceiver
) -> None:
    """The production wiring (`python -m app serve|worker`, OTEL_EXPORTER_OTLP_ENDPOINT set, nothing else):
    the two processes export to an OTLP/HTTP receiver, the job's span a child of the request's."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "HOST": "127.0.0.1",
        "PORT": str(port := free_port()),
        "WORKER_METRICS_PORT": "0",
        "WORKER_HEARTBEAT_FILE": settings.worker_heartbeat_file,
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # ms: export soon after a span ends
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "app", command],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for command in ("serve", "worker")
    ]
    try:
        _wait_port(port)
        created = httpx.post(
            f"http://127.0.0.1:{port}/notes",
            json={"title": "over otlp", "body": "two processes"},
            headers={"traceparent": TRACEPARENT},
        )
        assert created.status_code == 201, created.text
        eventually(lambda: [s for s in otlp_receiver.spans if s.name == "process notes:events"], timeout=30)
        eventually(lambda: [s for s in otlp_receiver.spans if s.name == "POST /notes"])
    finally:
        outputs = []
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                outputs.append(proc.communicate(timeout=30))
            except subprocess.TimeoutExpired:
                proc.kill()
                outputs.append(proc.communicate())
    assert [p.returncode for p in procs] in ([0, 0], [-signal.SIGTERM, 0]), outputs
    assert otlp_receiver.rejected == []
    assert [err for _, err in outputs] == ["", ""]  # no export error, no warning
    assert {s.trace_id for s in otlp_receiver.spans} == {TRACE_ID}  # the worker's polling is not traced
    server = _one(otlp_receiver.spans, lambda s: s.name == "POST /notes")
    job = _one(otlp_receiver.spans, lambda s: s.name == "process notes:events")
    assert (server.service, server.trace_id, server.parent_span_id) == ("conveyor-demo", TRACE_ID, PARENT_ID)
    assert (job.service, job.trace_id, job.parent_span_id) == (
        "conveyor-demo-worker",
        TRACE_ID,
        server.span_id,
    )
    web_lines = [json.loads(line) for line in outputs[0][0].splitlines()]
    access = _one(web_lines, lambda line: line.get("route") == "/notes")
    assert (access["trace_id"], access["span_id"]) == (TRACE_ID, server.span_id)
    worker_lines = [json.loads(line) for line in outputs[1][0].splitlines()]
    done = _one(worker_lines, lambda line: line.get("event") == "note processed")
    assert (done["trace_id"], done["span_id"]) == (TRACE_ID, job.span_id)


def test_console_exporter_writes_one_json_line_per_span_on_stderr() -> None:
    """`python -m app serve` with OTEL_TRACES_EXPORTER=console: spans on stderr, logs on stdout with ids."""
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
        **GOOD,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", "serve"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_port(port)
        response = httpx.get(f"http://127.0.0.1:{port}/health", headers={"traceparent": TRACEPARENT})
        assert response.status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
    spans = [json.loads(line) for line in err.splitlines()]
    server = _one(spans, lambda s: s["name"] == "GET /health")
    assert server["context"]["trace_id"] == f"0x{TRACE_ID}"
    assert server["parent_id"] == f"0x{PARENT_ID}"
    assert server["resource"]["attributes"]["service.name"] == "conveyor-demo"
    access = _one((json.loads(line) for line in out.splitlines()), lambda x: x.get("route") == "/health")
    assert (access["trace_id"], f"0x{access['span_id']}") == (TRACE_ID, server["context"]["span_id"])
