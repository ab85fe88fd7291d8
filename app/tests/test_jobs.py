"""The worker's job logic, its heartbeat and its command line, without any server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app import heartbeat
from app.jobs import SUMMARY_CHARS, analyse, event, note_id, shorten
from app.tests.conftest import free_port
from app.worker import Stop

ROOT = Path(__file__).resolve().parents[2]


def test_analysis_counts_words_and_takes_the_first_line() -> None:
    result = analyse("Groceries", "\n\n  Buy milk, eggs\nand don't forget the well-known #Bread!\n")
    assert result.words == 9  # "don't" and "well-known" are one word each; "#" and "!" are none
    assert result.summary == "Buy milk, eggs"
    assert result.tags == ["bread"]


def test_analysis_of_an_empty_body_summarises_the_title() -> None:
    result = analyse("just a   title", "")
    assert (result.words, result.summary, result.tags) == (0, "just a title", [])


def test_tags_are_lowercased_deduplicated_in_order_and_not_url_fragments() -> None:
    result = analyse("#Work plan", "see https://example.com/#anchor and #work #ops-2024 #Ops-2024 x#no #")
    assert result.tags == ["work", "ops-2024"]


def test_tags_are_bounded() -> None:
    body = " ".join(f"#t{i}" for i in range(50))
    assert len(analyse("t", body).tags) == 20


def test_long_first_line_is_cut_at_a_word_boundary() -> None:
    line = "word " * 60
    summary = analyse("t", line).summary
    assert len(summary) <= SUMMARY_CHARS
    assert summary.endswith("word\u2026")
    assert shorten("abcdefghij", 5) == "abcd\u2026"  # one long word: cut inside it
    assert shorten("ab cd", 5) == "ab cd"


def test_event_round_trips_and_bad_entries_have_no_id() -> None:
    assert note_id({k.encode(): v.encode() for k, v in event(42).items()}) == 42
    for fields in (None, {}, {b"id": b""}, {b"id": b"-1"}, {b"id": b"0"}, {b"id": b"x1"}, {b"id": b"9" * 30}):
        assert note_id(fields) is None


def test_heartbeat_is_fresh_then_stale_then_missing(tmp_path: Path) -> None:
    path = str(tmp_path / "beat")
    assert heartbeat.check(path) == (False, f"worker heartbeat {path} is missing")
    heartbeat.beat(path)
    now = os.stat(path).st_mtime
    assert heartbeat.check(path, now=now + 29.9)[0] is True
    fresh, line = heartbeat.check(path, now=now + 31)
    assert not fresh
    assert line == f"worker heartbeat {path} is stale: 31.0s old (max 30s)"


def test_stop_wait_returns_early_once_set() -> None:
    stop = Stop()
    started = time.monotonic()
    assert stop.wait(0.05) is False
    stop.set()
    assert stop.wait(10) is True
    assert time.monotonic() - started < 1


def _app(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        cwd=ROOT,
        env={"PATH": os.environ.get("PATH", "/usr/bin"), **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_check_command_follows_the_heartbeat(tmp_path: Path) -> None:
    path = tmp_path / "worker-heartbeat"
    env = {"WORKER_HEARTBEAT_FILE": str(path)}  # the check needs no database or Redis setting
    missing = _app("worker", "--check", env=env)
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines() == [f"app: worker heartbeat {path} is missing"]
    heartbeat.beat(str(path))
    fresh = _app("worker", "--check", env=env)
    assert fresh.returncode == 0, fresh.stderr
    old = time.time() - 45
    os.utime(path, (old, old))
    stale = _app("worker", "--check", env=env)
    assert stale.returncode == 1
    assert len(stale.stderr.strip().splitlines()) == 1
    assert "is stale" in stale.stderr


def test_check_with_a_relative_heartbeat_path_fails_in_one_line() -> None:
    result = _app("worker", "--check", env={"WORKER_HEARTBEAT_FILE": "beat"})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "app: invalid settings: WORKER_HEARTBEAT_FILE must be an absolute path, got 'beat'"
    ]


@pytest.mark.parametrize(("args"), [["serve", "--check"], ["migrate", "--check"], ["worker", "--reload"]])
def test_flags_of_another_command_are_usage_errors(args: list[str]) -> None:
    result = _app(*args, env={})
    assert result.returncode == 2
    assert "applies to" in result.stderr


def test_worker_with_invalid_settings_exits_2_in_one_line() -> None:
    result = _app(
        "worker",
        env={"DATABASE_URL": "postgresql://db/app", "REDIS_URL": "redis://cache/0", "STARTUP_TIMEOUT": "0"},
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "app: invalid settings: STARTUP_TIMEOUT must be between 1.0 and 600.0, got 0"
    ]


def test_worker_gives_up_on_an_unreachable_postgres_in_one_line(tmp_path: Path) -> None:
    env = {
        "DATABASE_URL": f"postgresql://app:pw@127.0.0.1:{free_port()}/app",
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "STARTUP_TIMEOUT": "1",
        "WORKER_HEARTBEAT_FILE": str(tmp_path / "beat"),
        "WORKER_METRICS_PORT": "0",  # this test is about postgres
    }
    started = time.monotonic()
    result = _app("worker", env=env, timeout=30)
    assert result.returncode == 1
    assert time.monotonic() - started < 15
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("app: worker: postgres not usable after 1s: OperationalError: ")
    assert "pw@" not in line
    waiting = [json.loads(out) for out in result.stdout.splitlines()]  # JSON logs, like the web process
    assert waiting
    assert {entry["event"] for entry in waiting} == {"waiting for postgres"}
    assert not (tmp_path / "beat").exists()  # a worker that is not running is not alive
