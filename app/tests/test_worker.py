"""The worker against REAL PostgreSQL and Redis: events processed, abandoned jobs re-processed, lost events
swept, SIGTERM in the middle of a job, the liveness check of a running worker."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from fastapi.testclient import TestClient

from app.jobs import GROUP, STREAM
from app.main import create_app
from app.migrations import migrate
from app.settings import Settings
from app.tests.conftest import Postgres, Redis
from app.worker import Stop, Worker

pytestmark = pytest.mark.services
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def settings(postgres: Postgres, redis_server: Redis, tmp_path: Path) -> Settings:
    migrate(postgres.url)
    redis.Redis.from_url(redis_server.url).delete(STREAM)  # a fresh stream and group per test
    return Settings(
        database_url=postgres.url,
        redis_url=redis_server.url,
        ready_timeout=0.5,
        startup_timeout=5,
        worker_heartbeat_file=str(tmp_path / "worker-heartbeat"),
        worker_sweep_interval=0.5,
    )


@pytest.fixture
def r(redis_server: Redis) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


@contextmanager
def running(settings: Settings, **kwargs: Any) -> Iterator[Worker]:
    """A worker looping in a thread until the block ends."""
    stop = Stop()
    worker = Worker(settings, stop=stop, **kwargs)
    failed: list[BaseException] = []

    def target() -> None:
        try:
            worker.run()
        except BaseException as exc:
            failed.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        stop.set()
        thread.join(15)
        assert not thread.is_alive(), "the worker did not stop"
    if failed:
        raise failed[0]


def eventually(condition: Callable[[], Any], timeout: float = 15) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"not true after {timeout}s: {condition}")


def insert_note(url: str, title: str, body: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "INSERT INTO notes (title, body) VALUES (%s, %s) RETURNING id", (title, body)
        ).fetchone()
    assert row is not None
    return int(row[0])


def processed(url: str, nid: int) -> tuple[Any, ...] | None:
    """(words, summary, tags, processed_at) once processed, else None."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT words, summary, tags, processed_at FROM notes WHERE id = %s AND processed_at IS NOT NULL",
            (nid,),
        ).fetchone()
    return row


def pending(r: redis.Redis) -> int:
    return int(r.xpending(STREAM, GROUP)["pending"])


def test_created_note_is_processed_and_shown_by_the_api(settings: Settings, r: redis.Redis) -> None:
    with TestClient(create_app(settings)) as client, running(settings, consumer="w-thread") as worker:
        created = client.post("/notes", json={"title": "Plan #Q3", "body": "Ship the worker.\nThen rest."})
        assert created.status_code == 201
        nid = created.json()["id"]
        note = eventually(
            lambda: client.get(f"/notes/{nid}").json()["processed_at"] and client.get(f"/notes/{nid}")
        )
        assert beat_age(worker) < 5
    body = note.json()
    assert (body["words"], body["summary"], body["tags"]) == (5, "Ship the worker.", ["q3"])
    assert pending(r) == 0  # acknowledged after the UPDATE
    assert not Path(settings.worker_heartbeat_file).exists()  # removed on a clean stop


def beat_age(worker: Worker) -> float:
    return time.time() - os.stat(worker.settings.worker_heartbeat_file).st_mtime


def test_job_of_a_worker_that_died_before_xack_is_claimed_by_another(
    settings: Settings, r: redis.Redis
) -> None:
    nid = insert_note(settings.database_url, "orphan", "one two three")
    r.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    entry = r.xadd(STREAM, {"id": str(nid)})
    # What a worker killed mid-job leaves behind: the entry delivered to it, never acknowledged.
    assert r.xreadgroup(GROUP, "dead-1", {STREAM: ">"}, count=1)[0][1][0][0] == entry
    time.sleep(0.3)
    with running(dataclasses.replace(settings, worker_claim_idle=0.2), consumer="w-live"):
        row = eventually(lambda: processed(settings.database_url, nid))
        eventually(lambda: pending(r) == 0)
    assert row[:3] == (3, "one two three", [])
    # The dead consumer, with nothing pending any more, is only removed after an hour of idleness.
    assert {c["name"] for c in r.xinfo_consumers(STREAM, GROUP)} == {b"dead-1", b"w-live"}


def test_restarted_worker_finishes_its_own_pending_job_first(settings: Settings, r: redis.Redis) -> None:
    nid = insert_note(settings.database_url, "mine", "restart")
    r.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    r.xadd(STREAM, {"id": str(nid)})
    r.xreadgroup(GROUP, "pod-a-7", {STREAM: ">"}, count=1)
    # Same consumer name (same hostname and pid after a container restart); no claim delay applies.
    with running(dataclasses.replace(settings, worker_claim_idle=3600), consumer="pod-a-7"):
        eventually(lambda: processed(settings.database_url, nid))
        eventually(lambda: pending(r) == 0)


def test_job_committed_but_not_acknowledged_is_acknowledged_without_redoing_it(
    settings: Settings, r: redis.Redis
) -> None:
    nid = insert_note(settings.database_url, "done", "already")
    r.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    r.xadd(STREAM, {"id": str(nid)})
    r.xreadgroup(GROUP, "dead-2", {STREAM: ">"}, count=1)
    first = Worker(settings, stop=Stop(), consumer="dead-2")
    try:
        assert first.process(nid) is True  # committed, then "died" before XACK
    finally:
        first.close()
    before = processed(settings.database_url, nid)
    time.sleep(0.3)
    with running(dataclasses.replace(settings, worker_claim_idle=0.2), consumer="w-next"):
        eventually(lambda: pending(r) == 0)
    assert processed(settings.database_url, nid) == before  # processed_at unchanged: skipped, not redone


def test_malformed_event_is_acknowledged_and_skipped(settings: Settings, r: redis.Redis) -> None:
    nid = insert_note(settings.database_url, "after", "the bad one")
    r.xadd(STREAM, {"id": "not-a-number"})
    r.xadd(STREAM, {"id": str(nid)})  # added before the group existed: the group starts at 0
    with running(settings, consumer="w-bad"):
        eventually(lambda: processed(settings.database_url, nid))
        eventually(lambda: pending(r) == 0)


def test_note_created_while_redis_is_down_is_found_by_the_sweep(
    settings: Settings, redis_server: Redis
) -> None:
    with TestClient(create_app(settings)) as client:
        redis_server.stop()
        try:
            started = time.monotonic()
            created = client.post("/notes", json={"title": "while redis is down", "body": "still saved"})
            assert created.status_code == 201  # the note is committed; only its event is lost
            assert time.monotonic() - started < 5
            nid = created.json()["id"]
            # The worker copes without Redis too: Postgres is the source of truth, the sweep finds the note.
            with running(settings, consumer="w-sweep", sweep_age=0):
                eventually(lambda: processed(settings.database_url, nid))
        finally:
            redis_server.start()
        # And with Redis back (empty: no persistence), the group is created again and events flow.
        with running(settings, consumer="w-back"):
            second = client.post("/notes", json={"title": "redis is back", "body": "a b"}).json()["id"]
            eventually(lambda: processed(settings.database_url, second))


def test_backlog_of_notes_older_than_the_worker_is_swept_in_rounds(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("app.worker.SWEEP_BATCH", 10)
    monkeypatch.setattr("app.worker.SWEEP_BATCHES", 2)
    with psycopg.connect(settings.database_url) as conn:
        ids = [
            row[0]
            for row in conn.execute(
                "INSERT INTO notes (title, body, created_at)"
                " SELECT 'old ' || n, 'written before the migration', now() - interval '1 hour'"
                " FROM generate_series(1, 55) AS n RETURNING id"
            ).fetchall()
        ]
    with running(dataclasses.replace(settings, worker_sweep_interval=3600), consumer="w-backlog"):
        left = "SELECT count(*) FROM notes WHERE id = ANY(%s) AND processed_at IS NULL"

        def done() -> bool:
            with psycopg.connect(settings.database_url) as conn:
                row = conn.execute(left, (ids,)).fetchone()
            return row is not None and row[0] == 0

        eventually(done)


def test_job_read_while_postgres_is_down_is_done_when_it_returns(
    settings: Settings, postgres: Postgres, r: redis.Redis
) -> None:
    nid = insert_note(settings.database_url, "patience", "postgres will be back")
    with running(settings, consumer="w-pg"):
        eventually(lambda: r.exists(STREAM))  # the group is there
        postgres.stop()
        try:
            r.xadd(STREAM, {"id": str(nid)})
            eventually(lambda: pending(r) == 1)  # read, and not acknowledged: its UPDATE could not commit
            time.sleep(0.5)
            assert pending(r) == 1
        finally:
            postgres.start()
        eventually(lambda: processed(settings.database_url, nid), timeout=20)
        eventually(lambda: pending(r) == 0)


def test_worker_waits_for_a_migrated_schema_then_gives_up_in_one_line(
    postgres: Postgres, tmp_path: Path
) -> None:
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS unmigrated")
        conn.execute("CREATE DATABASE unmigrated")
    url = postgres.url.rsplit("/", 1)[0] + "/unmigrated"
    result = subprocess.run(
        [sys.executable, "-m", "app", "worker"],
        cwd=ROOT,
        env={
            **os.environ,
            "DATABASE_URL": url,
            "REDIS_URL": "redis://127.0.0.1:1/0",
            "STARTUP_TIMEOUT": "1",
            "WORKER_HEARTBEAT_FILE": str(tmp_path / "beat"),
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "app: worker: postgres not usable after 1s: the schema is not migrated (run: python -m app migrate)"
    ]


def test_sigterm_finishes_the_job_in_hand_takes_no_new_one_and_exits_0(
    settings: Settings, r: redis.Redis, tmp_path: Path
) -> None:
    url = settings.database_url
    first = insert_note(url, "in hand", "finished after SIGTERM")
    second = insert_note(url, "after", "never taken by the stopping worker")
    beat = tmp_path / "worker-heartbeat"
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "REDIS_URL": settings.redis_url,
        "WORKER_HEARTBEAT_FILE": str(beat),
        "SHUTDOWN_GRACE": "20",
    }
    with psycopg.connect(url) as blocker:
        # Hold the note's row: the worker's job waits on it, so SIGTERM lands in the middle of the job.
        blocker.execute("SELECT 1 FROM notes WHERE id = %s FOR UPDATE", (first,))
        first_entry = r.xadd(STREAM, {"id": str(first)})
        proc = subprocess.Popen(
            [sys.executable, "-m", "app", "worker"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            eventually(lambda: _worker_waits_on_a_lock(url), timeout=30)
            check = subprocess.run(
                [sys.executable, "-m", "app", "worker", "--check"],
                cwd=ROOT,
                env=env,
                capture_output=True,
                check=False,
            )
            assert check.returncode == 0, check.stderr
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            r.xadd(STREAM, {"id": str(second)})
            time.sleep(1.5)  # longer than a blocking read: a worker still reading would take it now
            assert proc.poll() is None, "the worker left before finishing its job"
            blocker.rollback()  # release the row
            code = proc.wait(timeout=settings.shutdown_grace)
            out, err = proc.communicate()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert code == 0, err
    assert err == ""
    assert processed(url, first) is not None
    assert processed(url, second) is None
    assert pending(r) == 0
    group = r.xinfo_groups(STREAM)[0]
    assert group["last-delivered-id"] == first_entry  # the second entry was never read
    events = [json.loads(line)["event"] for line in out.splitlines()]  # JSON lines, like the web process
    assert events[-2:] == ["note processed", "worker stopped"]
    assert not beat.exists()
    after = subprocess.run(
        [sys.executable, "-m", "app", "worker", "--check"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        check=False,
    )
    assert after.returncode == 1


def _worker_waits_on_a_lock(url: str) -> bool:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE application_name = 'app-worker' AND wait_event_type = 'Lock'"
        ).fetchone()
    return bool(row and row[0])
