"""Settings come from the environment and a mistake names the variable in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from app.settings import Settings, SettingsError

GOOD = {"DATABASE_URL": "postgresql://u:pw@db:5432/app", "REDIS_URL": "redis://cache:6379/0"}


def test_defaults_and_overrides() -> None:
    s = Settings.from_env({**GOOD, "PORT": "9000", "LOG_LEVEL": "WARNING", "GIT_SHA": "abc123"})
    assert (s.port, s.log_level, s.git_sha, s.image_digest) == (9000, "warning", "abc123", "unknown")


def test_worker_defaults_and_overrides() -> None:
    s = Settings.from_env(GOOD)
    assert (s.worker_heartbeat_file, s.worker_claim_idle, s.worker_sweep_interval, s.startup_timeout) == (
        "/tmp/worker-heartbeat",
        60.0,
        30.0,
        30.0,
    )
    s = Settings.from_env(
        {
            **GOOD,
            "WORKER_HEARTBEAT_FILE": "/run/beat",
            "WORKER_CLAIM_IDLE": "5",
            "WORKER_SWEEP_INTERVAL": "2.5",
            "STARTUP_TIMEOUT": "90",
        }
    )
    assert (s.worker_heartbeat_file, s.worker_claim_idle, s.worker_sweep_interval, s.startup_timeout) == (
        "/run/beat",
        5.0,
        2.5,
        90.0,
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"REDIS_URL": GOOD["REDIS_URL"]}, "DATABASE_URL is not set"),
        ({**GOOD, "DATABASE_URL": "mysql://x/y"}, "DATABASE_URL must be a postgresql or postgres:// URL"),
        ({**GOOD, "REDIS_URL": "redis://"}, "REDIS_URL must be a redis or rediss:// URL with a host"),
        ({**GOOD, "PORT": "http"}, "PORT must be an integer, got 'http'"),
        ({**GOOD, "PORT": "70000"}, "PORT must be between 1 and 65535, got 70000"),
        ({**GOOD, "READY_TIMEOUT": "soon"}, "READY_TIMEOUT must be a number"),
        ({**GOOD, "LOG_LEVEL": "loud"}, "LOG_LEVEL must be one of debug, info, warning, error"),
        ({**GOOD, "STARTUP_TIMEOUT": "0.5"}, "STARTUP_TIMEOUT must be between 1.0 and 600.0"),
        ({**GOOD, "WORKER_HEARTBEAT_FILE": "tmp/beat"}, "WORKER_HEARTBEAT_FILE must be an absolute path"),
        ({**GOOD, "WORKER_CLAIM_IDLE": "soon"}, "WORKER_CLAIM_IDLE must be a number"),
        ({**GOOD, "WORKER_SWEEP_INTERVAL": "0"}, "WORKER_SWEEP_INTERVAL must be between 1.0 and 3600.0"),
    ],
)
def test_invalid_settings(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


def test_password_in_url_is_never_in_the_message() -> None:
    with pytest.raises(SettingsError) as exc:
        Settings.from_env({**GOOD, "DATABASE_URL": "mysql://u:sekrit-pw@db/app"})
    assert "sekrit-pw" not in str(exc.value)


def test_process_exits_nonzero_with_one_line_naming_the_variable() -> None:
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-m", "app", "serve"],
        cwd=root,
        env={"PATH": "/usr/bin", "REDIS_URL": GOOD["REDIS_URL"]},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "app: invalid settings: DATABASE_URL is not set (expected postgresql://...)"
    ]


def test_the_shutdown_grace_is_conveyors_shutdown_timeout_unless_overridden() -> None:
    base = {"DATABASE_URL": "postgresql://u@h/d", "REDIS_URL": "redis://h"}
    assert Settings.from_env({**base, "CONVEYOR_SHUTDOWN_TIMEOUT": "7"}).shutdown_grace == 7
    both = {**base, "CONVEYOR_SHUTDOWN_TIMEOUT": "7", "SHUTDOWN_GRACE": "9"}
    assert Settings.from_env(both).shutdown_grace == 9
