"""Throwaway PostgreSQL and Redis servers for the app's integration tests (real servers, no stand-ins).

PostgreSQL refuses to run as root, so under root the server runs as `nobody` from a folder it owns.
"""

from __future__ import annotations

import gzip
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest


def _pg_bin() -> Path:
    """PG_BIN, else the newest /usr/lib/postgresql/<version>/bin (Debian and Ubuntu layout)."""
    if os.environ.get("PG_BIN"):
        return Path(os.environ["PG_BIN"])
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    return found[-1] if found else Path("/usr/lib/postgresql/15/bin")


PG_BIN = _pg_bin()
IN_CI = os.environ.get("CI", "").lower() == "true"


def _missing(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def _as_service_user() -> dict[str, object]:
    return {"user": "nobody", "group": "nogroup"} if os.geteuid() == 0 else {}


@dataclass
class Postgres:
    port: int
    datadir: Path

    @property
    def url(self) -> str:
        return f"postgresql://app:app-test-pw@127.0.0.1:{self.port}/app"

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            [str(PG_BIN / "pg_ctl"), "-D", str(self.datadir), "-w", "-s", *args],
            check=True,
            capture_output=True,
            **_as_service_user(),  # type: ignore[call-overload]
        )

    def stop(self) -> None:
        self._ctl("stop", "-m", "fast")

    def start(self) -> None:
        self._ctl("start", "-l", str(self.datadir / "server.log"), "-o", f"-p {self.port} -k {self.datadir}")
        _wait_port(self.port)


@dataclass
class Redis:
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_port(self.port)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    if not (PG_BIN / "initdb").exists():
        _missing(f"PostgreSQL server binaries not found in {PG_BIN} (apt-get install postgresql-15)")
    base = Path(tempfile.mkdtemp(prefix="conveyor-pg-"))
    base.chmod(0o755)
    datadir = base / "data"
    datadir.mkdir()
    pwfile = base / "pw"
    pwfile.write_text("app-test-pw\n")
    if os.geteuid() == 0:
        shutil.chown(datadir, "nobody", "nogroup")
        shutil.chown(pwfile, "nobody", "nogroup")
    subprocess.run(
        [
            str(PG_BIN / "initdb"),
            "-D",
            str(datadir),
            "-U",
            "app",
            "--pwfile",
            str(pwfile),
            "-A",
            "scram-sha-256",
            "--no-sync",
            "-E",
            "UTF8",
        ],
        check=True,
        capture_output=True,
        **_as_service_user(),  # type: ignore[call-overload]
    )
    server = Postgres(free_port(), datadir)
    server.start()
    subprocess.run(
        [str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(server.port), "-U", "app", "app"],
        check=True,
        capture_output=True,
        env={**os.environ, "PGPASSWORD": "app-test-pw"},
    )
    try:
        yield server
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Redis]:
    if shutil.which("redis-server") is None:
        _missing("redis-server not found (apt-get install redis-server)")
    server = Redis(free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class ExportedSpan:
    """One span as an OTLP receiver got it: its service, ids in hex (as in `traceparent`), name, kind."""

    service: str
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int


class OtlpReceiver:
    """The trace side of an OpenTelemetry Collector's OTLP/HTTP receiver, binary protobuf encoding.

    As the specification has it (https://opentelemetry.io/docs/specs/otlp/#otlphttp): a POST of an
    ExportTraceServiceRequest to /v1/traces with Content-Type application/x-protobuf, optionally gzip
    (Content-Encoding); the answer is 200 with an ExportTraceServiceResponse in the same encoding. Any
    other path is 404, another method 405, another content type 415, an undecodable body 400. No
    collector can be installed here (none in Debian or PyPI), hence this stand-in.
    """

    def __init__(self) -> None:
        self.spans: list[ExportedSpan] = []
        self.rejected: list[int] = []
        self._server: ThreadingHTTPServer | None = None

    @property
    def endpoint(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> None:
        from google.protobuf.message import DecodeError
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )

        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                if self.path != "/v1/traces":
                    return self._answer(404)
                if self.headers.get("Content-Type") != "application/x-protobuf":
                    return self._answer(415)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                request = ExportTraceServiceRequest()
                try:
                    request.ParseFromString(body)
                except DecodeError:
                    return self._answer(400)
                for resource_spans in request.resource_spans:
                    attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                    for scope_spans in resource_spans.scope_spans:
                        for span in scope_spans.spans:
                            receiver.spans.append(
                                ExportedSpan(
                                    attributes.get("service.name", ""),
                                    span.trace_id.hex(),
                                    span.span_id.hex(),
                                    span.parent_span_id.hex(),
                                    span.name,
                                    span.kind,
                                )
                            )
                return self._answer(200, ExportTraceServiceResponse().SerializeToString())

            def do_GET(self) -> None:
                self._answer(405)

            def _answer(self, status: int, body: bytes = b"") -> None:
                if status != 200:
                    receiver.rejected.append(status)
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


@pytest.fixture
def otlp_receiver() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.stop()
