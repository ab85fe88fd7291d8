"""`python -m app serve|worker|migrate`: the web process, the worker process and the release step.

`python -m app worker --check` is the worker's health check: exit 0 while its heartbeat is fresh.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from app.heartbeat import MAX_AGE, check
from app.settings import Settings, SettingsError, heartbeat_file

if TYPE_CHECKING:
    from app.tracing import Tracing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app", description="conveyor-demo notes service")
    parser.add_argument(
        "command",
        choices=["serve", "worker", "migrate"],
        help="serve: run the web server; worker: process note events; migrate: apply schema",
    )
    parser.add_argument(
        "--reload", action="store_true", help="serve: restart on source changes (development only)"
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help=f"worker: exit 0 when a running worker's heartbeat is under {MAX_AGE:g}s old, else 1",
    )
    args = parser.parse_args(argv)
    if args.reload and args.command != "serve":
        parser.error("--reload applies to serve only")
    if args.check and args.command != "worker":
        parser.error("--check applies to worker only")
    if args.check:
        return _check_worker()
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"app: invalid settings: {exc}", file=sys.stderr)
        return 2
    if args.command == "migrate":
        return _migrate(settings)
    if args.command == "worker":
        return _worker(settings)
    return _serve(settings, reload=args.reload)


def _check_worker() -> int:
    """Reads WORKER_HEARTBEAT_FILE only: a probe must not fail for a setting the check does not use."""
    try:
        path = heartbeat_file()
    except SettingsError as exc:
        print(f"app: invalid settings: {exc}", file=sys.stderr)
        return 1  # a health check answers 0 or 1 (Docker reserves 2)
    fresh, line = check(path)
    print(f"app: {line}", file=sys.stdout if fresh else sys.stderr)
    return 0 if fresh else 1


def _worker(settings: Settings) -> int:
    import signal

    from app.observability import configure_logging
    from app.worker import StartupError, Stop, Worker
    from app.worker_metrics import serve

    configure_logging(settings.log_level, trace_ids=bool(settings.traces_exporters))
    serve(settings)  # Prometheus's view of the backlog (monitoring/rules), from a daemon thread
    stop = Stop()
    signal.signal(signal.SIGTERM, stop.set)
    signal.signal(signal.SIGINT, stop.set)
    tracing = _tracing(settings, "worker")
    try:
        Worker(settings, stop=stop, tracing=tracing).run()
    except StartupError as exc:
        print(f"app: worker: {exc}", file=sys.stderr)
        return 1
    finally:
        if tracing is not None:
            tracing.shutdown()  # export the last spans
    return 0


def _tracing(settings: Settings, process: str) -> Tracing | None:
    """OpenTelemetry for this process when the OTEL_* variables turn it on (app.tracing), else None."""
    if not settings.traces_exporters:
        return None
    from opentelemetry import trace

    from app.tracing import start

    tracing = start(settings, process)
    if tracing is not None:
        trace.set_tracer_provider(tracing.provider)  # for spans of code that asks the global API
    return tracing


def _migrate(settings: Settings) -> int:
    import psycopg

    from app.migrations import migrate

    try:
        applied = migrate(settings.database_url)
    except psycopg.Error as exc:
        print(
            f"app: migrate failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
            file=sys.stderr,
        )
        return 1
    print(f"app: migrate: applied {applied}" if applied else "app: migrate: schema is current")
    return 0


def create_from_env() -> object:
    """ASGI factory for `--reload` (uvicorn re-imports it in a fresh worker process)."""
    from app.main import create_app
    from app.observability import configure_logging

    settings = Settings.from_env()
    configure_logging(settings.log_level, trace_ids=bool(settings.traces_exporters))
    return create_app(settings, _tracing(settings, "web"))


def _serve(settings: Settings, *, reload: bool = False) -> int:
    import threading

    import structlog
    import uvicorn

    from app.main import create_app
    from app.observability import configure_logging

    configure_logging(settings.log_level, trace_ids=bool(settings.traces_exporters))
    log = structlog.get_logger("app")
    options: dict[str, object] = dict(
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,  # our middleware writes the access log (JSON, with the request id)
        timeout_graceful_shutdown=settings.shutdown_grace,
        proxy_headers=True,
        server_header=False,
    )
    if reload:
        uvicorn.run("app.__main__:create_from_env", factory=True, reload=True, reload_dirs=["app"], **options)  # type: ignore[arg-type]
        return 0
    tracing = _tracing(settings, "web")
    app = create_app(settings, tracing)

    class Draining(uvicorn.Server):
        """On SIGTERM, /ready fails at once while requests are still accepted for CONVEYOR_DRAIN_SECONDS
        (a health-checking proxy takes the instance out of rotation meanwhile); then uvicorn stops
        accepting and finishes what is in flight within SHUTDOWN_GRACE. A second signal stops at once."""

        def handle_exit(self, sig: int, frame: object) -> None:
            if app.state.draining() or settings.drain_seconds <= 0:
                app.state.drain()
                super().handle_exit(sig, frame)  # type: ignore[arg-type]
                return
            app.state.drain()
            log.info("draining", seconds=settings.drain_seconds)
            timer = threading.Timer(settings.drain_seconds, super().handle_exit, (sig, frame))
            timer.daemon = True
            timer.start()

    try:
        Draining(uvicorn.Config(app, **options)).run()  # type: ignore[arg-type]
    finally:
        if tracing is not None:
            tracing.shutdown()  # export the last spans
    return 0


if __name__ == "__main__":
    sys.exit(main())
