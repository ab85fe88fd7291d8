"""`python -m app serve|migrate`: the web process and the release step, separately."""

from __future__ import annotations

import argparse
import sys

from app.settings import Settings, SettingsError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app", description="conveyor-demo notes service")
    parser.add_argument(
        "command", choices=["serve", "migrate"], help="serve: run the web server; migrate: apply schema"
    )
    parser.add_argument(
        "--reload", action="store_true", help="serve: restart on source changes (development only)"
    )
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"app: invalid settings: {exc}", file=sys.stderr)
        return 2
    if args.command == "migrate":
        return _migrate(settings)
    return _serve(settings, reload=args.reload)


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
    configure_logging(settings.log_level)
    return create_app(settings)


def _serve(settings: Settings, *, reload: bool = False) -> int:
    import uvicorn

    from app.main import create_app
    from app.observability import configure_logging

    configure_logging(settings.log_level)
    uvicorn.run(
        "app.__main__:create_from_env" if reload else create_app(settings),
        factory=reload,
        reload=reload,
        reload_dirs=["app"] if reload else None,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,  # our middleware writes the access log (JSON, with the request id)
        timeout_graceful_shutdown=settings.shutdown_grace,
        proxy_headers=True,
        server_header=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
