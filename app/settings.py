"""12-factor settings: read from the environment once, validated, with one clear line per mistake."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

LOG_LEVELS = ("debug", "info", "warning", "error")
# OpenTelemetry (app.tracing): the exporters, propagators and samplers this image ships.
TRACES_EXPORTERS = ("otlp", "console", "none")
OTLP_PROTOCOL = "http/protobuf"
OTLP_ENDPOINTS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
PROPAGATORS = ("tracecontext", "baggage", "none")
SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
# The worker touches it on every loop; /tmp is the container's writable emptyDir.
DEFAULT_HEARTBEAT_FILE = "/tmp/worker-heartbeat"  # noqa: S108  # nosec B108
N = TypeVar("N", int, float)


class SettingsError(Exception):
    """A missing or invalid variable; the message names it (and never echoes a URL's password)."""


@dataclass(frozen=True)
class Settings:
    database_url: str
    redis_url: str
    git_sha: str = "unknown"
    image_digest: str = "unknown"
    log_level: str = "info"
    # A container listens on all interfaces.
    host: str = "0.0.0.0"  # noqa: S104  # nosec B104
    port: int = 8000
    max_body_bytes: int = 64 * 1024
    ready_timeout: float = 1.0
    shutdown_grace: int = 20
    drain_seconds: float = 0.0
    # The worker process (python -m app worker).
    startup_timeout: float = 30.0
    worker_heartbeat_file: str = DEFAULT_HEARTBEAT_FILE
    worker_claim_idle: float = 60.0
    worker_sweep_interval: float = 30.0
    worker_metrics_port: int = 9100  # the worker's /metrics (app.worker_metrics); 0: off
    # The span exporters (app.tracing); empty: tracing is off and costs nothing.
    traces_exporters: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        return cls(
            database_url=_url(env, "DATABASE_URL", ("postgresql", "postgres")),
            redis_url=_url(env, "REDIS_URL", ("redis", "rediss")),
            git_sha=env.get("GIT_SHA", "unknown") or "unknown",
            image_digest=env.get("IMAGE_DIGEST", "unknown") or "unknown",
            log_level=_choice(env, "LOG_LEVEL", LOG_LEVELS, "info"),
            host=env.get("HOST", "0.0.0.0"),  # noqa: S104  # nosec B104
            port=_number(env, "PORT", int, 8000, 1, 65535),
            max_body_bytes=_number(env, "MAX_BODY_BYTES", int, 64 * 1024, 1024, 16 * 1024 * 1024),
            ready_timeout=_number(env, "READY_TIMEOUT", float, 1.0, 0.05, 30.0),
            # conveyor gives every process its deploy.shutdown_timeout; SHUTDOWN_GRACE overrides it.
            shutdown_grace=_number(
                env, "SHUTDOWN_GRACE", int, _number(env, "CONVEYOR_SHUTDOWN_TIMEOUT", int, 20, 1, 300), 1, 300
            ),
            startup_timeout=_number(env, "STARTUP_TIMEOUT", float, 30.0, 1.0, 600.0),
            # Set by conveyor where nothing takes the instance out of rotation before SIGTERM (compose).
            drain_seconds=_number(env, "CONVEYOR_DRAIN_SECONDS", float, 0.0, 0.0, 300.0),
            worker_heartbeat_file=heartbeat_file(env),
            worker_claim_idle=_number(env, "WORKER_CLAIM_IDLE", float, 60.0, 1.0, 3600.0),
            worker_sweep_interval=_number(env, "WORKER_SWEEP_INTERVAL", float, 30.0, 1.0, 3600.0),
            worker_metrics_port=_number(env, "WORKER_METRICS_PORT", int, 9100, 0, 65535),
            traces_exporters=traces_exporters(env),
        )


def heartbeat_file(environ: Mapping[str, str] | None = None) -> str:
    """WORKER_HEARTBEAT_FILE alone: the worker's health check needs no other setting."""
    env = os.environ if environ is None else environ
    value = env.get("WORKER_HEARTBEAT_FILE", "") or DEFAULT_HEARTBEAT_FILE
    if not os.path.isabs(value):
        raise SettingsError(f"WORKER_HEARTBEAT_FILE must be an absolute path, got {value!r}")
    return value


def traces_exporters(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The span exporters the standard OTEL_* variables ask for; () when tracing is off.

    Off unless OTEL_TRACES_EXPORTER names an exporter or an OTLP endpoint is set; OTEL_SDK_DISABLED=true
    turns it off whatever else is set. The values the SDK would ignore with at most a log line (an unknown
    exporter, sampler or protocol, a malformed boolean, ratio or endpoint) are refused here instead.
    """
    env = os.environ if environ is None else environ
    disabled = env.get("OTEL_SDK_DISABLED", "").strip().lower()
    if disabled not in ("", "true", "false"):
        raise SettingsError(f"OTEL_SDK_DISABLED must be true or false, got {disabled!r}")
    if disabled == "true":
        return ()
    raw = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    names = tuple(dict.fromkeys(n.strip() for n in raw.split(",") if n.strip()))
    if any(n not in TRACES_EXPORTERS for n in names) or ("none" in names and len(names) > 1):
        raise SettingsError(
            f"OTEL_TRACES_EXPORTER must be otlp, console or none (no other exporter is installed),"
            f" got {raw!r}"
        )
    endpoints = [n for n in OTLP_ENDPOINTS if env.get(n)]
    if not names:
        names = ("otlp",) if endpoints else ()
    if names in ((), ("none",)):
        return ()
    if "otlp" in names:
        for name in endpoints:
            parts = urlsplit(env[name])
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise SettingsError(f"{name} must be an http:// or https:// URL with a host")
        for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
            protocol = env.get(name, "").strip()
            if protocol and protocol != OTLP_PROTOCOL:
                raise SettingsError(
                    f"{name} must be {OTLP_PROTOCOL} (the only OTLP exporter installed), got {protocol!r}"
                )
    for propagator in (p.strip() for p in env.get("OTEL_PROPAGATORS", "").split(",") if p.strip()):
        if propagator not in PROPAGATORS:
            raise SettingsError(
                f"OTEL_PROPAGATORS may list {', '.join(PROPAGATORS)} (no other is installed),"
                f" got {propagator!r}"
            )
    sampler = env.get("OTEL_TRACES_SAMPLER", "").strip().lower()
    if sampler and sampler not in SAMPLERS:
        raise SettingsError(f"OTEL_TRACES_SAMPLER must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    if sampler.endswith("traceidratio"):
        _number(env, "OTEL_TRACES_SAMPLER_ARG", float, 1.0, 0.0, 1.0)
    return names


def _url(env: Mapping[str, str], name: str, schemes: tuple[str, ...]) -> str:
    value = env.get(name, "")
    if not value:
        raise SettingsError(f"{name} is not set (expected {schemes[0]}://...)")
    parts = urlsplit(value)
    if parts.scheme not in schemes or not parts.hostname:
        raise SettingsError(f"{name} must be a {' or '.join(schemes)}:// URL with a host")
    return value


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    value = env.get(name, default).lower()
    if value not in choices:
        raise SettingsError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _number(
    env: Mapping[str, str], name: str, kind: Callable[[str], N], default: N, low: float, high: float
) -> N:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise SettingsError(
            f"{name} must be a{'n integer' if kind is int else ' number'}, got {raw!r}"
        ) from None
    if not low <= value <= high:  # type: ignore[operator]
        raise SettingsError(f"{name} must be between {low} and {high}, got {raw}")
    return value
