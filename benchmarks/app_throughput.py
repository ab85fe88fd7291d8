"""Requests/s of GET /health: our app (middleware, logging, metrics) vs a bare FastAPI app, same server.

Run: python benchmarks/app_throughput.py [--seconds 10]   (needs `wrk`: apt-get install wrk)
Three runs under uvicorn with the same settings on 127.0.0.1, one after the other, each loaded by wrk
with the same connections and duration: bare FastAPI, our app as it ships (tracing off: no OTEL_*
variable), and our app with tracing on (app.tracing.start: the SDK's tracer provider, FastAPI, psycopg
and Redis instrumented, a server span per request sampled and batched by the BatchSpanProcessor into an
exporter that discards them, so the SDK's cost is measured without a collector's network I/O; trace
ids in the log lines). The ratios are printed; tracing off must stay >= 0.8 of bare FastAPI. Postgres
and Redis are not needed: /health calls no dependency (that is the point of a liveness probe).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BARE = """
from fastapi import FastAPI

app = FastAPI()


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}
"""
OURS = """
from app.main import create_app
from app.observability import configure_logging
from app.settings import Settings

settings = Settings.from_env()
configure_logging("info")
app = create_app(settings)
"""
TRACED = """
from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from app.main import create_app
from app.observability import configure_logging
from app.settings import Settings
from app.tracing import start


class Discard(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


settings = Settings.from_env()
configure_logging("info", trace_ids=True)
app = create_app(settings, start(settings, "web", exporter=Discard()))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure(module_dir: Path, module: str, seconds: int) -> float:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},  # tracing off unless TRACED
        "PYTHONPATH": f"{module_dir}:{ROOT}",
        "DATABASE_URL": "postgresql://bench@127.0.0.1:9/bench",
        "REDIS_URL": "redis://127.0.0.1:9/0",
    }
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            f"{module}:app",
            "--port",
            str(port),
            "--no-access-log",
            "--log-level",
            "warning",
            "--loop",
            "uvloop",
            "--http",
            "httptools",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        url = f"http://127.0.0.1:{port}/health"
        subprocess.run(["wrk", "-t1", "-c16", "-d2s", url], check=True, capture_output=True)  # warm-up
        out = subprocess.run(
            ["wrk", "-t1", "-c16", f"-d{seconds}s", url], check=True, capture_output=True, text=True
        ).stdout
        match = re.search(r"Requests/sec:\s+([\d.]+)", out)
        assert match, out
        return float(match.group(1))
    finally:
        server.terminate()
        server.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "bench_bare.py").write_text(BARE)
        (folder / "bench_ours.py").write_text(OURS)
        (folder / "bench_traced.py").write_text(TRACED)
        bare = measure(folder, "bench_bare", args.seconds)
        ours = measure(folder, "bench_ours", args.seconds)
        traced = measure(folder, "bench_traced", args.seconds)
    print(f"bare FastAPI /health         : {bare:9.0f} req/s")
    print(f"conveyor app /health         : {ours:9.0f} req/s  (JSON access log, metrics, request ids)")
    print(f"conveyor app, tracing on     : {traced:9.0f} req/s  (+ a server span per request, batched)")
    print(f"ratio ours / bare            : {ours / bare:.2f}  (tracing off; goal >= 0.8)")
    print(f"ratio traced / bare          : {traced / bare:.2f}")
    print(f"ratio traced / ours          : {traced / ours:.2f}  (the cost of tracing on)")


if __name__ == "__main__":
    main()
